"""`mm sft` (being written).

placeholder
"""

def sft() -> None:
    raise NotImplementedError
