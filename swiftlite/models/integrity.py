"""Checks that a checkpoint's files are whole, before anything loads them: each problem is one line naming the file.

Without them a damaged checkpoint surfaced as whatever the loader happened to raise: a safetensors header
length of 2**60 as a MemoryError, a truncated file as "unexpected pos", a rank that does not match the
weights as a size-mismatch traceback, an adapter of NaN weights as NaN answers and exit 0. The checks only
read headers and small files (an adapter's weights are small), so they cost little next to loading a model.
Light imports only (json, struct, numpy for adapter values): `mm export`'s direct merge runs without torch.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

from swiftlite.errors import UserError

# safetensors dtype codes -> bytes per element
ITEM_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
              "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object (sft_args.json, adapter_config.json, trainer_state.json, config.json)."""
    try:
        value = json.loads(Path(path).read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error}); the file is damaged") from None
    except OSError as error:
        raise UserError(f"{path}: cannot be read ({error.strerror or error})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, found a {type(value).__name__}; the file is damaged")
    return value


def safetensors_header(path: Path) -> tuple[int, dict]:
    """(header length, header) of a safetensors file, checked against the file's size: every tensor's bytes lie
    inside the file, fit its dtype and shape, and the data ends where the file ends (so truncation shows)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: missing")
    size = path.stat().st_size
    what = "not a safetensors file, or damaged"
    if size < 8:
        raise UserError(f"{path}: {size} bytes: truncated or empty ({what})")
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > size - 8:
            raise UserError(f"{path}: its header claims {length} bytes but the file has {size}: truncated ({what})")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path}: its header is not JSON ({what})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: its header is not a JSON object ({what})")
    data_bytes, end_of_data = size - 8 - length, 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            count = math.prod(info["shape"])
            expected = count * ITEM_BYTES[info["dtype"]]
            valid = 0 <= start <= end and end - start == expected and all(d >= 0 for d in info["shape"])
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise UserError(f"{path}: the header entry of {key} is inconsistent ({what})")
        end_of_data = max(end_of_data, end)
    if end_of_data > data_bytes:
        raise UserError(f"{path}: truncated: its tensors need {end_of_data} bytes of data, the file holds {data_bytes}")
    if end_of_data < data_bytes:
        raise UserError(f"{path}: {data_bytes - end_of_data} bytes after the last tensor ({what})")
    return length, header


def check_adapter(ckpt_dir: Path, expected_rank: int | None = None) -> dict:
    """A LoRA checkpoint's adapter_config.json and weights; returns the config.

    The weights must be whole, finite (an adapter of NaN weights only ever answers garbage), and of the rank the
    config says. expected_rank: the rank the caller will build (`mm sft --lora_rank` when resuming).
    """
    ckpt_dir = Path(ckpt_dir)
    config_path = ckpt_dir / "adapter_config.json"
    config = read_json_object(config_path)
    rank = config.get("r", 8)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise UserError(f"{config_path}: r={rank!r}: expected a positive whole number")
    targets = config.get("target_modules")
    if targets is not None and not isinstance(targets, str) and not (
            isinstance(targets, list) and all(isinstance(name, str) for name in targets)):
        raise UserError(f"{config_path}: target_modules={targets!r}: expected a name, a regex or a list of names")
    if not isinstance(config.get("lora_alpha", 8), (int, float)) or isinstance(config.get("lora_alpha"), bool):
        raise UserError(f"{config_path}: lora_alpha={config.get('lora_alpha')!r}: expected a number")
    weights_path = ckpt_dir / ADAPTER_WEIGHTS
    if weights_path.exists() or not (ckpt_dir / "adapter_model.bin").is_file():
        safetensors_header(weights_path)  # missing, truncated, not safetensors: said here, naming the file
    import numpy as np

    keys = []
    for key, values in adapter_tensors(ckpt_dir):  # one at a time: a large adapter is never all in memory
        keys.append(key)
        if values is None:
            continue
        if not np.isfinite(values).all():
            raise UserError(f"{weights_path}: {key} holds NaN or inf values: the adapter is broken (saved by a run "
                            "that diverged?) and is refused")
        if ".lora_A" in key and not config.get("rank_pattern") and values.ndim == 2 and values.shape[0] != rank:
            raise UserError(f"{config_path}: r={rank}, but {key} in {weights_path.name} has rank {values.shape[0]}: "
                            "the config and the weights do not belong together")
    if isinstance(targets, list):  # peft's rule for a list: a module's full name, or its last dotted parts
        for key in keys:
            module = re.sub(r"^base_model\.model\.", "", key.split(".lora_")[0])
            if ".lora_" in key and not any(module == name or module.endswith("." + name) for name in targets):
                raise UserError(f"{config_path}: target_modules names no module the adapter's weights adapt (such as "
                                f"{module}); the adapter does not fit its base model")
    if expected_rank is not None and expected_rank != rank and not config.get("rank_pattern"):
        raise UserError(f"--lora_rank {expected_rank}: the checkpoint {ckpt_dir} was trained with r={rank} "
                        f"({config_path}); pass --lora_rank {rank} to resume it")
    return config


def adapter_tensors(ckpt_dir: Path):
    """(name, values as a float numpy array, or None when not floating) for each adapter tensor, one at a time."""
    from swiftlite.lora_merge import FLOAT_CODES, _header_tensors, load_adapter_weights, read_values

    path = ckpt_dir / ADAPTER_WEIGHTS
    if not path.is_file():  # adapter_model.bin: a pickle, loaded whole
        yield from load_adapter_weights(ckpt_dir).items()
        return
    with open(path, "rb") as handle:
        for tensor in _header_tensors(handle, path.name):
            yield tensor.key, read_values(handle, tensor) if tensor.dtype in FLOAT_CODES else None


def check_full_weights(model_dir: Path) -> None:
    """A full or merged checkpoint: its safetensors files whole (and present), its JSON files valid JSON."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index}: no weight_map object; the file is damaged")
        for name in sorted(set(weight_map.values())):
            safetensors_header(model_dir / str(name))
    elif (model_dir / "model.safetensors").exists():
        safetensors_header(model_dir / "model.safetensors")
    elif not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("pytorch_model*.bin")):
        # transformers' loader says this as an OSError traceback (mm infer --ckpt_dir of a merged export).
        raise UserError(f"{model_dir / 'model.safetensors'}: missing: the checkpoint holds no weights "
                        "(no *.safetensors, no pytorch_model*.bin)")
    # generation_config.json too: transformers drops one that is not JSON without a word, and its sampling
    # defaults (do_sample, temperature, ...) with it.
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        if (model_dir / name).exists():
            read_json_object(model_dir / name)
