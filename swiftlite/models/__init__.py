"""Model registry (data) and loading. Importing this package registers every family."""

from swiftlite.models import llava, qwen2_vl  # noqa: F401  (registration side effect)
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
