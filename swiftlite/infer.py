"""`mm infer` (being written).

placeholder
"""

def infer() -> None:
    raise NotImplementedError
