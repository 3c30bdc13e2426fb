"""Finding a checkpoint (model type, hub id or local directory) and loading model, tokenizer and processors.

A registered model type is downloaded from ModelScope by default, from the Hugging Face Hub with
`--use_hf true` or USE_HF=1. A local directory is used as it is. Any checkpoint whose config.json names a
registered architecture works, registered or not: its family is detected from the config.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from swiftlite.errors import UserError
from swiftlite.hub_env import use_hf_default
from swiftlite.models.registry import (
    ModelFamily,
    family_for_config,
    get_model_type,
    model_type_for_hub_id,
)


@dataclass
class ResolvedModel:
    model_dir: Path
    family: ModelFamily
    model_type: str  # registry name, or the family name for an unregistered checkpoint of a known architecture
    template_type: str
    torch_dtype: str  # the checkpoint's preferred dtype on GPU
    is_chat: bool = True


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir} holds no config.json: it is not a transformers checkpoint directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None


def download(hub_id: str, use_hf: bool, revision: str | None = None) -> Path:
    """Fetch a checkpoint from the hub into its cache (with the hub's own progress bars) and return its dir."""
    try:
        if use_hf:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(hub_id, revision=revision))
        from modelscope import snapshot_download

        return Path(snapshot_download(hub_id, revision=revision or "master"))
    except Exception as error:  # network, auth, unknown repo: all user-facing
        hub = "Hugging Face" if use_hf else "ModelScope"
        switch = "drop --use_hf" if use_hf else "try --use_hf true"
        raise UserError(
            f"could not download {hub_id!r} from {hub} ({error_summary(error)}). "
            f"Check the id and your network, {switch}, or pass a local directory with --model."
        ) from None


def error_summary(error: Exception, limit: int = 240) -> str:
    """`Type: message` on one line, shortened at a word boundary (never mid-word); an `[Errno N] reason` that
    the shortening dropped (urllib3 puts it last, after the URL) is kept, since it says what went wrong."""
    import re
    import textwrap

    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    short = textwrap.shorten(text, width=limit, placeholder=" ...")
    errno = re.search(r"\[Errno [-\d]+\] [^'\")\]]+", text)
    if errno and errno.group(0) not in short:
        short += f" ({errno.group(0).strip()})"
    return short


def resolve_model(model_type: str | None = None, model_id_or_path: str | None = None,
                  use_hf: bool | None = None, revision: str | None = None) -> ResolvedModel:
    """Work out which checkpoint the user means and where its files are (downloading if needed)."""
    use_hf = use_hf_default() if use_hf is None else use_hf
    registered = get_model_type(model_type) if model_type else None
    if model_id_or_path is None:
        if registered is None:
            raise UserError("say which model to use: --model_type <type> or --model <hub id or directory>")
        hub_id = registered.hf_id if use_hf else registered.modelscope_id
        model_dir = download(hub_id, use_hf, revision)
    elif Path(model_id_or_path).expanduser().exists():
        model_dir = Path(model_id_or_path).expanduser().resolve()
        if not model_dir.is_dir():
            raise UserError(f"--model {model_id_or_path}: not a directory")
    elif model_id_or_path.startswith((".", "/", "~")) or model_id_or_path.count("/") != 1:
        raise UserError(f"--model {model_id_or_path}: no such directory")
    else:
        registered = registered or model_type_for_hub_id(model_id_or_path)
        model_dir = download(model_id_or_path, use_hf, revision)

    config = read_config(model_dir)
    family = family_for_config(config)
    if family is None:
        architectures = ", ".join(config.get("architectures") or [config.get("model_type", "?")])
        raise UserError(f"{model_dir}: architecture {architectures} is not supported yet. Run `mm list` to see supported models.")
    if registered is not None and registered.family is not family:
        raise UserError(f"--model_type {registered.name} is a {registered.family.name} model but {model_dir} holds a {family.name} checkpoint")
    if registered is not None:
        return ResolvedModel(model_dir, family, registered.name, registered.template_type, registered.torch_dtype, registered.is_chat)
    return ResolvedModel(model_dir, family, family.name, family.template, _config_dtype(config))


def _config_dtype(config: dict) -> str:
    dtype = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return dtype if dtype in ("bfloat16", "float16", "float32") else "bfloat16"


# ---- devices and dtypes -------------------------------------------------------------------------------
DTYPE_ALIASES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
                 "half": "float16", "fp32": "float32", "float32": "float32", "float": "float32"}


def choose_dtype(requested: str | None, preferred: str = "bfloat16", device: str | None = None):
    """'auto' -> the checkpoint's dtype on a GPU that supports it, fp16 on older GPUs, fp32 on CPU."""
    import torch

    requested = (requested or "auto").lower()
    if requested != "auto":
        if requested not in DTYPE_ALIASES:
            raise UserError(f"--dtype {requested}: expected auto, bf16, fp16 or fp32")
        return getattr(torch, DTYPE_ALIASES[requested])
    device = device or default_device()
    if not device.startswith("cuda"):
        return torch.float32  # half-precision matmuls are slow or unsupported on CPUs
    if preferred == "bfloat16" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return getattr(torch, preferred)


def default_device(cuda_available: bool | None = None) -> str:
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if cuda_available:
        # Under torchrun each process owns the GPU of its local rank (CUDA_VISIBLE_DEVICES is honoured by torch).
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def placement(device_map=None, device: str | None = None, placed_by_trainer: bool = False) -> dict:
    """from_pretrained's placement keywords: straight onto the device (`device_map={"": device}`, the process's
    own GPU by default), never the CPU first and `.to(device)` after, which holds every weight in host RAM on
    the way; `device_map` as given ('auto' spreads over GPUs); nothing when training places the weights
    (ZeRO-3 partitions them while loading, FSDP shards when it wraps)."""
    if device_map is not None:
        return {"device_map": device_map}
    if placed_by_trainer:
        return {}
    device = device or default_device()
    return {} if device == "cpu" else {"device_map": {"": device}}


# ---- loading ------------------------------------------------------------------------------------------
# pip distribution name -> import name, where they differ.
_IMPORT_NAMES = {"pillow": "PIL", "opencv-python": "cv2", "scikit-learn": "sklearn"}


def check_requirements(family: ModelFamily | None) -> dict:
    """Fail with one clear line if a package the family's code needs is missing; return the from_pretrained
    keyword arguments the family needs (trust_remote_code=True for checkpoints that ship their own code).

    A remote-code checkpoint imports its packages (tiktoken, einops, ...) only while transformers runs its
    code, and a missing one surfaces there as a deep ImportError: checking `family.requires` first names them
    all at once. Packages that register their model classes on import (deepseek_vl) are imported here.
    """
    import importlib
    import importlib.util
    import re

    if family is None:
        return {}
    modules = {}
    for requirement in family.requires:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
        modules[requirement] = _IMPORT_NAMES.get(name.lower(), name.replace("-", "_"))
    missing = [req for req, module in modules.items() if importlib.util.find_spec(module) is None]
    if missing:
        names = ", ".join(re.match(r"[A-Za-z0-9_.\-]+", req).group(0) for req in missing)
        command = " ".join(f"'{req}'" if set(req) & set("<>=@ ") else req for req in missing)
        raise UserError(f"{family.name} needs the packages: {names} (pip install {command})")
    if not family.remote_code:
        return {}
    for module in modules.values():
        importlib.import_module(module)
    return {"trust_remote_code": True}


def load_tokenizer(model_dir: Path, family: ModelFamily | None = None):
    """The tokenizer, carrying the checkpoint's processors (`tokenizer.swiftlite_processors`, read by templates).

    The processors are loaded part by part as transformers loads them (swiftlite.models.processors): an image
    or audio model without its processor fails here with one line naming the file and the fix.
    """
    from transformers import AutoTokenizer

    from swiftlite.models.processors import load_processors

    model_dir = Path(model_dir)
    remote = check_requirements(family)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, **remote)
    processors = load_processors(model_dir, family, remote)
    if getattr(tokenizer, "chat_template", None) is None:
        tokenizer.chat_template = processors.chat_template
    check_chat_template(model_dir, tokenizer.chat_template)
    tokenizer.swiftlite_processors = processors
    tokenizer.swiftlite_model_config = read_config(model_dir)
    tokenizer.swiftlite_model_dir = str(model_dir)
    return tokenizer


def check_chat_template(model_dir: Path, chat_template) -> None:
    """A checkpoint's chat template that does not parse failed only at the first row, as a jinja2
    TemplateSyntaxError traceback: say so at load, naming the file it most likely came from."""
    from jinja2 import TemplateError

    try:  # private, but the only way to parse with transformers' own tags ({% generation %}); present 5.19-5.24
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # a transformers without it: the template is still checked when first rendered
        return
    templates = chat_template.values() if isinstance(chat_template, dict) else [chat_template]
    for template in templates:
        if not isinstance(template, str):
            continue
        try:
            _compile_jinja_template(template)  # transformers' own environment (its extra tags), cached for later
        except TemplateError as error:
            source = next((model_dir / name for name in ("chat_template.jinja", "chat_template.json",
                                                         "tokenizer_config.json") if (model_dir / name).is_file()),
                          model_dir)
            line = f" at line {error.lineno}" if getattr(error, "lineno", None) else ""
            raise UserError(f"{source}: the chat template does not parse ({error}{line}); the file is "
                            "damaged") from None


def load_model(model_dir: Path, family: ModelFamily, torch_dtype=None, device_map=None, device: str | None = None,
               attn_impl: str | None = None, quantization_config=None, placed_by_trainer: bool = False):
    """The model in eval mode, loaded straight onto `device` (or spread by `device_map`, e.g. 'auto' over
    several GPUs): loading on the CPU and then moving would hold the weights in host RAM first.

    `placed_by_trainer`: load without placing it anywhere, because training places it. Under ZeRO-3
    (TrainingArguments built first, so HfDeepSpeedConfig is live) transformers partitions the weights across
    the processes while loading (deepspeed.zero.Init), and FSDP shards the CPU copy when it wraps the model.
    """
    import transformers

    kwargs = check_requirements(family)
    auto_class = getattr(transformers, family.auto_class)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    kwargs.update(placement(device_map, device, placed_by_trainer))
    if attn_impl is not None:
        kwargs["attn_implementation"] = attn_impl
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    model = auto_class.from_pretrained(model_dir, **kwargs)
    model.eval()
    return model


ATTN_IMPLS = ("sdpa", "eager", "flash_attention_2")


def check_attn_impl(attn_impl: str | None, flag_name: str = "--attn_impl") -> str | None:
    """None (transformers' default, sdpa), or an attention implementation that can run here."""
    import importlib.util

    if attn_impl is None:
        return None
    if attn_impl not in ATTN_IMPLS:
        raise UserError(f"{flag_name} {attn_impl}: expected one of {', '.join(ATTN_IMPLS)}")
    if attn_impl == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise UserError(f"{flag_name} flash_attention_2: the flash-attn package is not installed "
                            "(pip install flash-attn --no-build-isolation), or use sdpa")
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"{flag_name} flash_attention_2 runs on CUDA GPUs only; use sdpa or eager")
    return attn_impl


_load_model = load_model  # get_model_tokenizer's `load_model` keyword (ms-swift's name) hides the function there


def get_model_tokenizer(model_type: str | None = None, torch_dtype=None, model_kwargs: dict | None = None,
                        load_model_weights: bool = True, model_id_or_path: str | None = None,
                        use_hf: bool | None = None, *, load_model: bool | None = None, device_map=None):
    """ms-swift's API: (model, tokenizer) for a model type (or a hub id / directory).

    Both generations of ms-swift's call work: 2.x `get_model_tokenizer(model_type, ..., load_model_weights=False)`
    and 3.x/4.x `get_model_tokenizer(model_id_or_path, ..., load_model=False, device_map=...)`; with
    `load_model(_weights)=False` the model is None.
    """
    from swiftlite.models import MODEL_TYPES

    if load_model is not None:
        if load_model_weights is not True and bool(load_model) != bool(load_model_weights):
            raise TypeError(f"get_model_tokenizer: load_model={load_model} and load_model_weights={load_model_weights} "
                            "disagree; give one of them")
        load_model_weights = load_model
    if (model_id_or_path is None and model_type and model_type not in MODEL_TYPES
            and ("/" in model_type or Path(model_type).expanduser().is_dir())):
        model_type, model_id_or_path = None, model_type  # 3.x/4.x: the first argument is the model id or path
    resolved = resolve_model(model_type, model_id_or_path, use_hf)
    tokenizer = load_tokenizer(resolved.model_dir, resolved.family)
    tokenizer.swiftlite_model_type = resolved.model_type
    tokenizer.swiftlite_template_type = resolved.template_type
    if not load_model_weights:
        return None, tokenizer
    model_kwargs = dict(model_kwargs or {})
    device_map = model_kwargs.pop("device_map", device_map)
    if isinstance(torch_dtype, str) or torch_dtype is None:
        torch_dtype = choose_dtype(torch_dtype, resolved.torch_dtype)
    model = _load_model(resolved.model_dir, resolved.family, torch_dtype, device_map)
    model.swiftlite_model_type = resolved.model_type
    model.swiftlite_template_type = resolved.template_type
    return model, tokenizer
