"""`mm export` (being written).

placeholder
"""

def export() -> None:
    raise NotImplementedError
