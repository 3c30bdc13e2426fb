"""Fold a plain LoRA adapter into a model's safetensors files, tensor by tensor (the fast path of `mm export`).

Every adapted weight becomes W + alpha/r * B @ A, computed in fp32 and stored in W's own dtype; every other
tensor is copied byte for byte. The output keeps the base checkpoint's key layout, dtypes and config.json, so
whatever loaded the base loads the result. Tensors stream from the base files into the output files, so memory
holds one tensor at a time whatever the size of the model. The arithmetic is numpy on the CPU (a rank-r update is
cheap next to the I/O): no torch, transformers or peft import, so a merge starts in a fraction of a second.

`plan_direct_merge` says whether an adapter can be merged this way (plain LoRA on 2-D weights whose names match
the base checkpoint's); when it cannot it returns the reason, and `mm export` merges through peft instead.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from swiftlite.errors import UserError

# Checkpoint keys vs module names. Hub checkpoints use older layouts (`visual.*`, `model.layers.*`,
# `language_model.model.*`, `vision_tower.vision_model.*`) than transformers' current modules (`model.visual.*`,
# `model.language_model.*`, `model.vision_tower.*`), and peft adapters are keyed by module name. Both sides are
# rewritten by the same rules (first match per pass), so names that already agree keep agreeing, and a key and a
# module meet when transformers' checkpoint conversion would map one to the other. Anything left unmatched, or two
# keys meeting in one name, sends the merge to peft: slower, never wrong.
TOWERS = "visual|vision_tower|vision_model|multi_modal_projector|audio_tower|image_newline"  # under `model.` since 4.52
CANONICAL_NAME_RULES: list[list[tuple[str, str]]] = [
    [(r"^language_model\.lm_head\.", "lm_head."), (r"^language_model\.model\.", "model.language_model."),
     (r"^language_model\.", "model.language_model."), (rf"^({TOWERS})\b", r"model.\1"),
     (rf"^model\.(?!(language_model|{TOWERS})\b)", "model.language_model.")],
    [(r"^model\.vision_tower\.vision_model\.", "model.vision_tower.")],
]
# adapter_config.json keys that do not change what merging computes. Any other key with a non-empty value
# (use_dora, modules_to_save, bias, alpha_pattern, ... and whatever peft adds next) sends the merge to peft.
NEUTRAL_ADAPTER_KEYS = {
    "base_model_name_or_path", "revision", "task_type", "peft_type", "auto_mapping", "inference_mode", "r",
    "target_modules", "exclude_modules", "lora_alpha", "lora_dropout", "init_lora_weights", "layers_to_transform",
    "layers_pattern", "rank_pattern", "use_rslora", "peft_version", "loftq_config", "eva_config", "corda_config",
    "lora_ga_config", "megatron_core", "qalora_group_size", "ensure_weight_tying",
}
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# safetensors dtype codes: bytes per element; the floating ones a merge or --dtype computes with (BF16 by bit ops)
ITEM_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}
FLOAT_CODES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
DTYPE_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # --dtype -> safetensors code
COPY_CHUNK = 64 << 20


@dataclass
class StoredTensor:
    file: str  # file name in the base dir
    key: str
    dtype: str  # safetensors code: F32, BF16, ...
    shape: list[int]
    offset: int  # of its bytes in the file
    nbytes: int


@dataclass
class DirectPlan:
    tensors: list[StoredTensor]  # every tensor of the base checkpoint
    merges: dict[str, tuple]  # base checkpoint key -> (lora_A, lora_B, scaling)


def plan_direct_merge(ckpt_dir: Path, base_dir: Path) -> DirectPlan | str:
    """A DirectPlan, or a string saying why this adapter needs peft's merge."""
    config = read_json(ckpt_dir / "adapter_config.json")
    if config.get("peft_type", "LORA") != "LORA":
        return f"adapter type {config.get('peft_type')} is not plain LoRA"
    for key, value in config.items():
        if key not in NEUTRAL_ADAPTER_KEYS and value not in (None, False, {}, [], "none", ""):
            return f"adapter_config.json sets {key}={value!r}"
    tensors = stored_tensors(base_dir)
    if tensors is None:
        return f"the base model {base_dir} has no safetensors weights"
    pairs: dict[str, dict[str, object]] = {}
    for key, value in load_adapter_weights(ckpt_dir).items():
        match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight", key)
        if match is None or value is None:
            return f"the adapter holds {key}, which is not a LoRA A/B matrix"
        pairs.setdefault(match.group(1), {})[match.group(2)] = value
    if not pairs:
        raise UserError(f"{ckpt_dir}: the adapter holds no LoRA weights")

    by_name: dict[str, StoredTensor] = {}
    for tensor in tensors:
        name = canonical_name(tensor.key)
        if name in by_name:
            return f"two base tensors share the name {name}"
        by_name[name] = tensor
    base_config = read_json(base_dir / "config.json")
    tied = base_config.get("tie_word_embeddings") or (base_config.get("text_config") or {}).get("tie_word_embeddings")
    merges = {}
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            return f"{module} has only lora_{''.join(pair)}"
        lora_a, lora_b = pair["A"], pair["B"]
        weight = by_name.get(canonical_name(module + ".weight"))
        if weight is None:
            return f"no base tensor matches the adapted module {module}"
        if (lora_a.ndim != 2 or lora_b.ndim != 2 or weight.dtype not in FLOAT_CODES
                or list(weight.shape) != [lora_b.shape[0], lora_a.shape[1]] or lora_a.shape[0] != lora_b.shape[1]):
            return f"{module}: LoRA shapes {list(lora_a.shape)}, {list(lora_b.shape)} do not fit {weight.shape}"
        if tied and module.split(".")[-1] in ("lm_head", "embed_tokens"):
            return f"{module} is tied to the input embeddings"
        rank = lora_a.shape[0]  # the module's own rank (rank_pattern may differ from r)
        alpha = config.get("lora_alpha", 8)
        merges[weight.key] = (lora_a, lora_b, alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank)
    return DirectPlan(tensors, merges)


def canonical_name(name: str) -> str:
    for rules in CANONICAL_NAME_RULES:
        for pattern, replacement in rules:
            renamed, count = re.subn(pattern, replacement, name, count=1)
            if count:
                name = renamed
                break
    return name


# Why not safetensors.safe_open and its writers (tried in issue 20, figures in docs/benchmarks.md): its numpy
# framework cannot read bf16, so it needs torch (seconds of import and ~200 MB, 5x the wall time of a small merge);
# it maps the whole file, so a pass over a model holds the model's pages unless each tensor reopens the file; a
# SIGTERM or Ctrl-C that lands inside its reads surfaces as a ValueError with a traceback instead of the clean
# interrupt `mm export` promises (test_killed_export_leaves_no_target failed 3 runs of 17); and save_file takes
# every tensor of a file at once. The headers are small JSON, checked by models/integrity.py.
def stored_tensors(base_dir: Path) -> list[StoredTensor] | None:
    """Every tensor of a safetensors checkpoint, read from the file headers (no weights are loaded)."""
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        files = list(dict.fromkeys(read_json(index)["weight_map"].values()))
    elif (base_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return None
    tensors = []
    for name in files:
        with open(base_dir / name, "rb") as handle:
            tensors += _header_tensors(handle, name)
    return tensors


def _header_tensors(handle, name: str) -> list[StoredTensor]:
    from swiftlite.models.integrity import safetensors_header

    # Checked against the file's size first: a damaged file is one line naming it, not a MemoryError (a header
    # length of 2**60) or a short read deep in the merge.
    length, header = safetensors_header(Path(handle.name))
    header.pop("__metadata__", None)
    tensors = []
    for key, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        start, end = info["data_offsets"]
        tensors.append(StoredTensor(name, key, info["dtype"], info["shape"], 8 + length + start, end - start))
    return tensors


def read_values(handle, tensor: StoredTensor):
    """A floating tensor's values as a numpy array: float64 for F64, else float32 (bf16 widened exactly)."""
    import numpy as np

    handle.seek(tensor.offset)
    data = handle.read(tensor.nbytes)
    if tensor.dtype == "BF16":  # bf16 is the top half of an fp32
        values = (np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        wide = np.float64 if tensor.dtype == "F64" else np.float32
        values = np.frombuffer(data, dtype=FLOAT_CODES[tensor.dtype]).astype(wide)
    return values.reshape(tensor.shape)


def encode_values(values, code: str):
    """Values in the dtype `code`, as the array whose bytes go into the file (bf16: round to nearest even)."""
    import numpy as np

    if code != "BF16":
        return np.ascontiguousarray(values, dtype=FLOAT_CODES[code])
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), ((bits >> 16) | 0x40).astype(np.uint16), rounded)  # NaN stays a quiet NaN


def load_adapter_weights(ckpt_dir: Path) -> dict:
    """name -> fp32 numpy array (None for a tensor that is not floating-point)."""
    path = ckpt_dir / ADAPTER_WEIGHT_FILES[0]
    if path.is_file():
        weights = {}
        with open(path, "rb") as handle:
            for tensor in _header_tensors(handle, path.name):
                weights[tensor.key] = read_values(handle, tensor) if tensor.dtype in FLOAT_CODES else None
        return weights
    if (ckpt_dir / ADAPTER_WEIGHT_FILES[1]).is_file():
        import torch

        weights = torch.load(ckpt_dir / ADAPTER_WEIGHT_FILES[1], map_location="cpu", weights_only=True)
        return {key: value.float().numpy() if value.is_floating_point() else None for key, value in weights.items()}
    raise UserError(f"{ckpt_dir}: has adapter_config.json but no {' or '.join(ADAPTER_WEIGHT_FILES)}")


# ---- writing ----------------------------------------------------------------------------------------------
def write_merged(plan: DirectPlan, base_dir: Path, out_dir: Path, out_dtype: str | None, shard_bytes: int) -> int:
    """Write the merged weights (sharded past shard_bytes, with an index) into out_dir; returns the merge count.

    out_dtype: None keeps every tensor's dtype, else "float32", "float16" or "bfloat16" for all floating tensors.
    """
    import numpy as np
    from tqdm import tqdm

    out_code = DTYPE_CODES[out_dtype] if out_dtype else None

    def written_dtype(tensor: StoredTensor) -> str:
        return out_code if out_code and tensor.dtype in FLOAT_CODES else tensor.dtype

    def written_bytes(tensor: StoredTensor) -> int:
        if written_dtype(tensor) == tensor.dtype:
            return tensor.nbytes
        return tensor.nbytes // ITEM_BYTES[tensor.dtype] * ITEM_BYTES[written_dtype(tensor)]

    shards: list[list[StoredTensor]] = [[]]
    filled = 0
    for tensor in plan.tensors:
        if shards[-1] and filled + written_bytes(tensor) > shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(tensor)
        filled += written_bytes(tensor)
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]

    def convert(tensor: StoredTensor, source):
        """The tensor's output values (merged and/or cast); only called for tensors that change."""
        values = read_values(source, tensor)
        if tensor.key in plan.merges:
            lora_a, lora_b, scaling = plan.merges[tensor.key]
            delta = lora_b @ lora_a
            delta *= scaling
            values += delta  # in fp32 (fp64 for an fp64 weight), rounded once to the stored dtype below
            if not np.isfinite(values).all():
                _note(f"warning: the merged {tensor.key} holds NaN or inf: the adapter or the dtype overflows")
        return encode_values(values, written_dtype(tensor))

    weight_map: dict[str, str] = {}
    sources: dict[str, object] = {}
    total = sum(written_bytes(tensor) for tensor in plan.tensors)
    try:
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="Merging", file=sys.stderr,
                  disable=None) as progress:
            for name, shard in zip(names, shards):
                # Widest dtypes first keeps every tensor aligned to its element size (as safetensors itself does).
                shard.sort(key=lambda tensor: (-ITEM_BYTES.get(written_dtype(tensor), 1), tensor.key))
                header, position = {"__metadata__": {"format": "pt"}}, 0
                for tensor in shard:
                    size = written_bytes(tensor)
                    header[tensor.key] = {"dtype": written_dtype(tensor), "shape": tensor.shape,
                                          "data_offsets": [position, position + size]}
                    position += size
                    weight_map[tensor.key] = name
                encoded = json.dumps(header, separators=(",", ":")).encode()
                encoded += b" " * (-len(encoded) % 8)
                with open(out_dir / name, "wb") as out:
                    out.write(struct.pack("<Q", len(encoded)) + encoded)
                    for tensor in shard:
                        if tensor.file not in sources:
                            sources[tensor.file] = open(base_dir / tensor.file, "rb")
                        source = sources[tensor.file]
                        if tensor.key in plan.merges or written_dtype(tensor) != tensor.dtype:
                            out.write(convert(tensor, source))
                        else:
                            _copy_bytes(source, out, tensor.offset, tensor.nbytes)
                        progress.update(written_bytes(tensor))
    finally:
        for source in sources.values():
            source.close()
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return len(plan.merges)


def _copy_bytes(source, out, offset: int, count: int) -> None:
    source.seek(offset)
    while count > 0:
        chunk = source.read(min(count, COPY_CHUNK))
        if not chunk:
            raise UserError(f"{source.name} is truncated: it ends inside a tensor")
        out.write(chunk)
        count -= len(chunk)


def copy_config(base_dir: Path, out_dir: Path, out_dtype: str | None) -> None:
    """config.json as the base has it (same layout for every loader); only the dtype changes with --dtype."""
    if out_dtype is None:
        shutil.copyfile(base_dir / "config.json", out_dir / "config.json")
        return
    config = read_json(base_dir / "config.json")
    name = out_dtype
    for section in [config] + [value for value in config.values() if isinstance(value, dict)]:
        for key in ("dtype", "torch_dtype"):
            if key in section:
                section[key] = name
    if "dtype" not in config and "torch_dtype" not in config:
        config["torch_dtype"] = name
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> dict:
    from swiftlite.models.integrity import read_json_object

    return read_json_object(path)


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
