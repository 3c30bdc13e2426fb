"""swiftlite: fine-tune, merge, chat with and serve multimodal LLMs.

The names below follow ms-swift's Python API (`from swift.llm import ...` becomes `from swiftlite import ...`).
They are resolved lazily so that `import swiftlite` (and `mm --help`) does not pay for torch.
"""

__version__ = "0.1.0"

_LAZY = {
    "get_model_tokenizer": ("swiftlite.models.loading", "get_model_tokenizer"),
    "get_template": ("swiftlite.templates", "get_template"),
    "get_default_template_type": ("swiftlite.api", "get_default_template_type"),
    "ModelType": ("swiftlite.api", "ModelType"),
    "seed_everything": ("swiftlite.api", "seed_everything"),
    "inference": ("swiftlite.infer_api", "inference"),
    "inference_stream": ("swiftlite.infer_api", "inference_stream"),
    "get_model_list_client": ("swiftlite.client", "get_model_list_client"),
    "inference_client": ("swiftlite.client", "inference_client"),
    "inference_client_async": ("swiftlite.client", "inference_client_async"),
    "XRequestConfig": ("swiftlite.client", "XRequestConfig"),
    "get_model_list_client_async": ("swiftlite.client", "get_model_list_client_async"),
    "convert_to_base64": ("swiftlite.client", "convert_to_base64"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'swiftlite' has no attribute {name!r}")
