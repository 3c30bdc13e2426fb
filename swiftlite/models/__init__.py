"""Model registry (data) and loading. Importing this package registers every family.

Each family is one module in this package that calls `register_family`; modules are discovered, so adding
a family means adding a file.
"""

import importlib
import pkgutil

from swiftlite.models.registry import (
    FAMILIES,
    MODEL_TYPES,
    ModelFamily,
    ModelSpec,
    UnknownModelError,
    family_for_config,
    get_model_type,
    model_type_for_hub_id,
)

_NOT_FAMILIES = {"registry", "loading", "checkpoint"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_FAMILIES:
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "FAMILIES",
    "MODEL_TYPES",
    "ModelFamily",
    "ModelSpec",
    "UnknownModelError",
    "family_for_config",
    "get_model_type",
    "model_type_for_hub_id",
]
