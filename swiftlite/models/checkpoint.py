"""Checkpoints written by `mm sft` and `mm export`, and loading any model for inference.

Every checkpoint describes itself: `sft_args.json` beside the weights records the base model, template,
system prompt, dtype and dataset settings, so `mm infer|export|deploy --ckpt_dir DIR` need nothing else.
A LoRA checkpoint holds a peft adapter (adapter_config.json + adapter weights) and points at its base
model; a full or merged checkpoint holds complete weights plus tokenizer and processor files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from swiftlite.errors import UserError
from swiftlite.models.checkpoint_files import SFT_ARGS_FILE, read_sft_args
from swiftlite.models.loading import ResolvedModel, read_config, resolve_model

MS_SWIFT_ARGS_FILE = "args.json"  # what ms-swift 3.x/4.x saves beside its checkpoints


@dataclass
class Checkpoint:
    ckpt_dir: Path
    args: dict = field(default_factory=dict)

    @property
    def is_adapter(self) -> bool:
        return (self.ckpt_dir / "adapter_config.json").is_file()

    @property
    def base_model(self) -> str | None:
        return self.args.get("model_id_or_path")

    @property
    def model_type(self) -> str | None:
        return self.args.get("model_type")

    @property
    def template_type(self) -> str | None:
        return self.args.get("template_type")

    @property
    def system(self) -> str | None:
        return self.args.get("system")

    @property
    def dtype(self) -> str | None:
        return self.args.get("dtype")


def read_checkpoint(ckpt_dir: str | Path) -> Checkpoint:
    """The checkpoint in `ckpt_dir`, its files checked (swiftlite.models.integrity): a damaged file is one line."""
    path = Path(ckpt_dir).expanduser()
    if not path.is_dir():
        raise UserError(f"--ckpt_dir {ckpt_dir}: no such directory")
    if (path / SFT_ARGS_FILE).is_file():
        checkpoint = Checkpoint(path.resolve(), read_sft_args(path))
    elif (path / "adapter_config.json").is_file():  # an adapter trained elsewhere (ms-swift 3.x/4.x, peft)
        checkpoint = Checkpoint(path.resolve(), foreign_adapter_args(path))
    elif (path / "config.json").is_file():
        checkpoint = Checkpoint(path.resolve(), {})  # a plain model directory: treat as a full checkpoint
    else:
        raise UserError(
            f"--ckpt_dir {ckpt_dir}: holds neither {SFT_ARGS_FILE} nor config.json; pass a checkpoint-<step> "
            "directory written by `mm sft` (or its -merged export)"
        )
    check_checkpoint_files(checkpoint)
    return checkpoint


def checkpoint_given_as_model(model: str | None, ckpt_dir: str | None) -> tuple[str | None, str | None]:
    """(model, ckpt_dir) as loaded: a --model directory holding sft_args.json (a full `mm sft` checkpoint, an
    `mm export` merge), with no --ckpt_dir/--adapters, is read as that checkpoint, sft_args.json included (its
    system, dtype, dataset split). ms-swift 3.x/4.x pass full checkpoints as --model and read their args.json."""
    if model and not ckpt_dir and (Path(model).expanduser() / SFT_ARGS_FILE).is_file():
        return None, model
    return model, ckpt_dir


def check_checkpoint_files(checkpoint: Checkpoint) -> None:
    """An adapter's config and weights (whole, finite, of its rank), or a full checkpoint's weight headers and
    tokenizer files, before any loader sees them."""
    from swiftlite.models.integrity import check_adapter, check_full_weights

    if checkpoint.is_adapter:
        check_adapter(checkpoint.ckpt_dir)
    else:
        check_full_weights(checkpoint.ckpt_dir)


def load_adapter(model, ckpt_dir: Path, adapter_name: str = "default"):
    """peft's PeftModel.from_pretrained, with its errors for an adapter that does not fit the base model (target
    modules it lacks, tensors of other shapes) as one line naming the checkpoint."""
    try:
        return peft_model_from_pretrained(model, str(ckpt_dir), adapter_name=adapter_name)
    except (ValueError, RuntimeError, KeyError, TypeError, OSError) as error:
        text = str(error).strip().splitlines()
        mismatch = next((line.strip() for line in text if "size mismatch" in line), None)
        file_name = "adapter_model.safetensors" if mismatch else "adapter_config.json"
        detail = mismatch or (text[0] if text else "")
        raise UserError(f"{Path(ckpt_dir) / file_name}: the adapter does not fit its base model "
                        f"({type(error).__name__}: {detail[:300]})") from None


def foreign_adapter_args(path: Path) -> dict:
    """What reloading needs, in sft_args.json's terms, for an adapter without sft_args.json: from ms-swift
    3.x/4.x's args.json when there is one, else the base model peft recorded in adapter_config.json.

    ms-swift's model_type and template names (qwen2_vl) are not swiftlite's, so they are left out: the base
    model's config.json picks the family and its template."""
    args_file = path / MS_SWIFT_ARGS_FILE
    if args_file.is_file():
        try:
            raw = json.loads(args_file.read_text())
        except json.JSONDecodeError as error:
            raise UserError(f"{args_file} is not valid JSON: {error}") from None
        args = {"model_id_or_path": raw.get("model"), "system": raw.get("system"), "dtype": raw.get("torch_dtype"),
                "sft_type": raw.get("tuner_type") or raw.get("train_type"), "dataset": raw.get("dataset"),
                "val_dataset": raw.get("val_dataset") or None, "dataset_test_ratio": raw.get("split_dataset_ratio"),
                "seed": raw.get("data_seed", raw.get("seed"))}
    else:
        try:
            adapter = json.loads((path / "adapter_config.json").read_text())
        except json.JSONDecodeError as error:
            raise UserError(f"{path / 'adapter_config.json'} is not valid JSON: {error}") from None
        args = {"model_id_or_path": adapter.get("base_model_name_or_path"), "sft_type": "lora"}
    return {key: value for key, value in args.items() if value is not None}


def resolve_checkpoint(checkpoint: Checkpoint, use_hf: bool | None = None, base_model: str | None = None) -> ResolvedModel:
    """The model the checkpoint runs on: its base model for an adapter, itself for full weights.

    `base_model` (`--model` next to `--adapters`, as ms-swift 3.x/4.x users write it) is used for an adapter whose
    recorded base is missing or not found here."""
    if checkpoint.is_adapter:
        base = checkpoint.base_model
        if base_model and (not base or not Path(base).exists()):
            base = base_model
        hub_id = base and base.count("/") == 1 and not base.startswith((".", "/", "~"))
        if base and not Path(base).exists() and (checkpoint.model_type and "/" in base and not base.startswith("/")
                                                 or hub_id):
            return resolve_model(_registered(checkpoint.model_type), base, use_hf)
        if not base or not Path(base).exists():
            if checkpoint.model_type:
                return _with_template(resolve_model(checkpoint.model_type, None, use_hf), checkpoint)
            raise UserError(f"{checkpoint.ckpt_dir}: the base model {base!r} recorded in {SFT_ARGS_FILE} is not found"
                            if (checkpoint.ckpt_dir / SFT_ARGS_FILE).is_file() else
                            f"{checkpoint.ckpt_dir}: the adapter's base model {base!r} is not found; name it with "
                            "--model BASE")
        return _with_template(resolve_model(_registered(checkpoint.model_type), base, use_hf), checkpoint)
    read_config(checkpoint.ckpt_dir)
    resolved = resolve_model(_registered(checkpoint.model_type), str(checkpoint.ckpt_dir), use_hf)
    return _with_template(resolved, checkpoint)


def _registered(model_type: str | None) -> str | None:
    from swiftlite.models.registry import MODEL_TYPES

    return model_type if model_type in MODEL_TYPES else None


def _with_template(resolved: ResolvedModel, checkpoint: Checkpoint) -> ResolvedModel:
    if checkpoint.template_type:
        resolved.template_type = checkpoint.template_type
    if checkpoint.model_type:
        resolved.model_type = checkpoint.model_type
    return resolved


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    template: object
    resolved: ResolvedModel
    checkpoint: Checkpoint | None = None
    adapters: dict = field(default_factory=dict)  # adapter name -> path


def load_for_inference(
    model_type: str | None = None,
    model_id_or_path: str | None = None,
    ckpt_dir: str | None = None,
    dtype: str | None = "auto",
    device_map: str | None = None,
    use_hf: bool | None = None,
    system: str | None = None,
    max_pixels: int | None = None,
    media_policy=None,
    template_type: str | None = None,
) -> LoadedModel:
    """Everything `mm infer` and `mm deploy` need: model (with adapter), tokenizer, bound template."""
    from swiftlite.models.loading import choose_dtype, default_device, load_model, load_tokenizer
    from swiftlite.templates import get_template

    checkpoint = read_checkpoint(ckpt_dir) if ckpt_dir else None
    if checkpoint is not None:
        resolved = resolve_checkpoint(checkpoint, use_hf, base_model=model_id_or_path)
        if dtype in (None, "auto") and checkpoint.dtype not in (None, "auto") and default_device() != "cpu":
            dtype = checkpoint.dtype
        system = system if system is not None else checkpoint.system
        max_pixels = max_pixels if max_pixels is not None else checkpoint.args.get("max_pixels")
    else:
        resolved = resolve_model(model_type, model_id_or_path, use_hf)
    torch_dtype = choose_dtype(dtype, resolved.torch_dtype)
    tokenizer = load_tokenizer(resolved.model_dir, resolved.family)
    model = load_model(resolved.model_dir, resolved.family, torch_dtype, device_map)
    adapters = {}
    if checkpoint is not None and checkpoint.is_adapter:
        name = "default"
        model = load_adapter(model, checkpoint.ckpt_dir, name)
        model.eval()
        adapters[name] = str(checkpoint.ckpt_dir)
    template = get_template(
        template_type or resolved.template_type, tokenizer, default_system=system, max_pixels=max_pixels,
        media_policy=media_policy,
    )
    return LoadedModel(model, tokenizer, template, resolved, checkpoint, adapters)


def peft_model_from_pretrained(model, path: str, adapter_name: str = "default"):
    """peft's PeftModel.from_pretrained, without the FutureWarning it triggers on transformers 5.

    PeftModel.__init__ reads `model.is_gradient_checkpointing`, which transformers 5 deprecated in favour of
    is_activation_checkpointing; the notice is peft's to fix, and in infer and deploy it only confuses users.
    Only that one warning, only during this call, is silenced.
    """
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return PeftModel.from_pretrained(model, path, adapter_name=adapter_name)
