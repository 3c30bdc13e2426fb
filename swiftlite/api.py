"""Small pieces of ms-swift's Python API that are not a subcommand: ModelType names, seeding."""

from __future__ import annotations

import os
import random

from swiftlite.models import MODEL_TYPES, get_model_type


class _ModelTypeNames:
    """`ModelType.qwen2_vl_2b_instruct == 'qwen2-vl-2b-instruct'`, as ms-swift's ModelType class."""

    def __getattr__(self, attribute: str) -> str:
        for name in MODEL_TYPES:
            if name.replace("-", "_").replace(".", "_") == attribute:
                return name
        raise AttributeError(f"ModelType has no {attribute!r}; run `mm list` for model types")

    def get_model_name_list(self) -> list[str]:
        return list(MODEL_TYPES)

    def __dir__(self):
        return [name.replace("-", "_").replace(".", "_") for name in MODEL_TYPES]


ModelType = _ModelTypeNames()


def get_default_template_type(model_type: str) -> str:
    return get_model_type(model_type).template_type


def seed_everything(seed: int = 42, deterministic: bool = False) -> int:
    """Seed Python, NumPy and torch (all devices) so runs repeat."""
    import numpy as np
    import torch

    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return seed
