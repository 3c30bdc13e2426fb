"""`mm deploy` (being written).

placeholder
"""

def deploy() -> None:
    raise NotImplementedError
