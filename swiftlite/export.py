"""Merge a LoRA checkpoint into full weights that load anywhere: mm infer/deploy, transformers, vLLM.

`mm export --ckpt_dir output/<model_type>/v<N>-<ts>/checkpoint-<step> --merge_lora true` writes
`<ckpt_dir>-merged/`: the base model's weights with the adapter folded in (safetensors, sharded by
--max_shard_size), its config.json, generation config, every tokenizer/processor/chat-template file, and an
sft_args.json that describes a full checkpoint (sft_type "full", model_id_or_path = the merged dir,
merged_from = the LoRA checkpoint).

How: a plain LoRA adapter (the kind `mm sft` writes) is merged tensor by tensor straight from the base
model's safetensors files by swiftlite.lora_merge (W + alpha/r * B @ A in fp32, stored in the weight's own
dtype): the output keeps the base checkpoint's key layout and dtypes, the merge imports no torch,
transformers or peft, and memory holds one tensor at a time. Any other adapter (DoRA, modules_to_save, bias
training, LoRA on embeddings or convolutions, ...) goes through peft: load the base in its dtype, merge_and_unload
in place, save_pretrained.

The target appears all at once: files go to `.<name>.tmp-<pid>` beside it and are renamed into place at
the end, so an interrupted export leaves no target (a killed one's temp dir is removed by the next export);
swiftlite.models.checkpoint_files does the staging and publishing, for `mm sft`'s checkpoints too.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated

import typer

from swiftlite.errors import UserError, disk_full
from swiftlite.export_layout import write_vllm_layout
from swiftlite.lora_merge import DirectPlan, copy_config, plan_direct_merge, read_json, write_merged
from swiftlite.models.checkpoint_files import (SFT_ARGS_FILE, non_weight_files, processor_files, publish,
                                               read_sft_args, stage_beside, write_sft_args)
from swiftlite.options import click_errors, flag, opt

_EXPORT_LOCK = threading.Lock()  # one export at a time per process (the temp dir is named by pid)


# ---- the command ------------------------------------------------------------------------------------------
def export(
    model: Annotated[str | None, opt(
        "model", "Base model of the adapter (local directory or hub id), for an adapter whose recorded base is not "
        "on this machine (ms-swift 3.x/4.x: --model BASE --adapters DIR); the recorded base wins when it is here.",
        "--model_id_or_path", "--model-id-or-path")] = None,
    ckpt_dir: Annotated[str | None, opt(
        "ckpt_dir", "Checkpoint written by `mm sft` (…/checkpoint-<step>) holding a LoRA adapter and sft_args.json.",
        "--adapters")] = None,
    merge_lora: Annotated[bool, flag(
        "merge_lora", "Merge the LoRA adapter into the base model's weights and write a full checkpoint."
    )] = False,
    output_dir: Annotated[str | None, opt(
        "output_dir", "Where to write the merged checkpoint. Default: <ckpt_dir>-merged beside the checkpoint."
    )] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite/--no_overwrite", "--replace_if_exists/--no_replace_if_exists",
        "--replace-if-exists/--no-replace-if-exists", "--exist_ok/--no_exist_ok", "--exist-ok/--no-exist-ok",
        help="Replace an existing output directory (only once the new one is complete). Without it an existing "
             "target is an error. [accepts --flag, --flag true|false]")] = False,
    device: Annotated[str, opt(
        "device", "Where a merge through peft runs: cpu, cuda, cuda:N or auto (a GPU if there is one). The direct "
        "merge streams on the CPU (it is I/O-bound).", "--merge_device_map", "--merge-device-map", "--device_map"
    )] = "cpu",
    dtype: Annotated[str, opt(
        "dtype", "dtype of the merged weights: auto (keep the base model's), bf16, fp16 or fp32.", "--torch_dtype"
    )] = "auto",
    max_shard_size: Annotated[str, opt(
        "max_shard_size", "Largest weight file to write, e.g. 5GB, 500MB, 2GiB; bigger models are split into "
        "model-0000i-of-0000n.safetensors plus an index."
    )] = "5GB",
    check_load: Annotated[bool, flag(
        "check_load", "Before moving the result into place, load it with transformers (model, tokenizer, "
        "processor) and run one forward pass. Needs memory for a second copy."
    )] = False,
    use_hf: Annotated[bool, flag(
        "use_hf", "Download a base model recorded as a hub id from the Hugging Face Hub instead of ModelScope."
    )] = False,
    merge_method: Annotated[str, opt(
        "merge_method", "auto: merge tensor by tensor from the safetensors files when the adapter is plain LoRA, "
        "else through peft; direct or peft to force one (peft: load the model, merge_and_unload, save_pretrained)."
    )] = "auto",
) -> None:
    if not merge_lora:
        raise click_errors.UsageError(
            "nothing to do: `mm export` merges a LoRA checkpoint into full weights. Run "
            "`mm export --ckpt_dir output/<model_type>/v<N>-<ts>/checkpoint-<step> --merge_lora true` "
            "(writes <ckpt_dir>-merged; options: --output_dir, --overwrite, --device, --dtype, --max_shard_size). "
            "Quantisation and hub upload are not available yet."
        )
    if not ckpt_dir:
        raise click_errors.UsageError(
            "--merge_lora needs --ckpt_dir: the checkpoint-<step> directory written by `mm sft`")
    _stop_cleanly_on_sigterm()
    report = merge_checkpoint(ckpt_dir, output_dir, overwrite, device, dtype, max_shard_size, check_load=check_load,
                              use_hf=use_hf or None, method=merge_method, base_model=model)
    if report.nothing_to_merge:
        print(f"nothing to merge: {report.target} is a full checkpoint (no adapter_config.json); use it as it is:\n"
              f"  mm infer --ckpt_dir {report.target}")
        return
    print(f"merged {report.merged_layers} LoRA layers ({report.method}) in {report.seconds:.1f} s into {report.target}")
    for name in report.files:
        print(f"  {name}  {(report.target / name).stat().st_size:,} bytes")
    print(f"next: mm infer --ckpt_dir {report.target}")


def _stop_cleanly_on_sigterm() -> None:
    """SIGTERM (kill, docker stop, a scheduler) raises Terminated, so the temp dir is removed like on Ctrl-C and
    the CLI prints one line and exits 143 (`mm export` is also called from Python: install it here too)."""
    from swiftlite.errors import unwind_on_sigterm

    if threading.current_thread() is threading.main_thread():
        unwind_on_sigterm()


# ---- the Python API (used by `mm infer --merge_lora true` and `mm deploy`) ---------------------------------
@dataclass
class MergeReport:
    target: Path
    method: str = ""  # "direct" (tensor by tensor from safetensors) or "peft" (merge_and_unload)
    merged_layers: int = 0
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    nothing_to_merge: bool = False
    reused: bool = False


def merge_lora_checkpoint(ckpt_dir: str | Path, output_dir: str | Path | None = None, overwrite: bool = False,
                          device: str = "cpu", dtype: str | None = None, *, max_shard_size: str | int = "5GB",
                          reuse_existing: bool = False, check_load: bool = False, use_hf: bool | None = None,
                          method: str = "auto", base_model: str | None = None) -> Path:
    """Merge the LoRA checkpoint `ckpt_dir` into full weights; return the merged directory.

    A full checkpoint has nothing to merge: its own directory is returned and nothing is written. With
    `reuse_existing`, a complete earlier export of this same checkpoint at the target is returned as it is
    (what `mm infer --merge_lora true` wants); otherwise an existing target is an error unless `overwrite`.
    `method`: "auto" (direct when the adapter allows, else peft), "direct" or "peft". `base_model`: the base of
    an adapter whose recorded one is not here (`--model`).
    """
    return merge_checkpoint(ckpt_dir, output_dir, overwrite, device, dtype, max_shard_size,
                            reuse_existing=reuse_existing, check_load=check_load, use_hf=use_hf, method=method,
                            base_model=base_model).target


def merge_checkpoint(ckpt_dir, output_dir=None, overwrite=False, device="cpu", dtype=None, max_shard_size="5GB",
                     reuse_existing=False, check_load=False, use_hf=None, method="auto",
                     base_model=None) -> MergeReport:
    """merge_lora_checkpoint, returning what was done (the CLI prints it)."""
    from swiftlite.models.checkpoint import resolve_checkpoint

    started = time.perf_counter()
    checkpoint = _read_lora_checkpoint(ckpt_dir, base_model)
    if not checkpoint.is_adapter:
        _note(f"nothing to merge: {checkpoint.ckpt_dir} is a full checkpoint")
        return MergeReport(checkpoint.ckpt_dir, nothing_to_merge=True)
    shard_bytes = parse_size(max_shard_size)
    device = _check_device(device)
    out_dtype = _output_dtype(dtype)
    if method not in ("auto", "direct", "peft"):
        raise UserError(f"--merge_method {method}: expected auto, direct or peft")
    recorded = checkpoint.base_model
    if base_model and not (recorded and Path(recorded).expanduser().exists()):
        # --model is the base of an adapter whose recorded one is not here (a hub id offline, another machine's
        # path), as for mm infer; the merged sft_args.json then names it as the base.
        checkpoint = replace(checkpoint, args={**checkpoint.args, "model_id_or_path": base_model})
    elif base_model and Path(base_model).expanduser().resolve() != Path(recorded).expanduser().resolve():
        _note(f"note: --model {base_model} ignored: {checkpoint.ckpt_dir} records its base model, {recorded}")
    resolved = resolve_checkpoint(checkpoint, use_hf)
    base_dir = resolved.model_dir
    target = Path(output_dir).expanduser().resolve() if output_dir else checkpoint.ckpt_dir.with_name(
        checkpoint.ckpt_dir.name + "-merged")
    _check_target_is_safe(target, checkpoint.ckpt_dir, base_dir)
    if target.exists() and reuse_existing and _is_export_of(target, checkpoint.ckpt_dir):
        _note(f"using the earlier merge of {checkpoint.ckpt_dir}: {target}")
        return MergeReport(target, reused=True)
    if target.exists() and not overwrite:
        flag_name = "--output_dir" if output_dir else "the merged directory"
        raise UserError(f"{flag_name} {target} already exists; pass --overwrite true to replace it "
                        "(or --output_dir to write elsewhere)")

    with _EXPORT_LOCK:
        temp = stage_beside(target, _note)
        try:
            report = MergeReport(target)
            plan = plan_direct_merge(checkpoint.ckpt_dir, base_dir) if method != "peft" else None
            if isinstance(plan, DirectPlan):
                if device not in ("cpu", "auto"):
                    _note(f"note: the direct merge streams on the CPU (it is I/O-bound); --device {device} is for "
                          "merges through peft")
                report.method = "direct"
                report.merged_layers = write_merged(plan, base_dir, temp, out_dtype, shard_bytes)
                copy_config(base_dir, temp, out_dtype)
            else:
                if method == "direct":
                    raise UserError(f"--ckpt_dir {checkpoint.ckpt_dir}: cannot merge directly: {plan}")
                if plan:
                    _note(f"merging through peft: {plan}")
                report.method = "peft"
                report.merged_layers = _merge_with_peft(checkpoint.ckpt_dir, base_dir, resolved.family, temp,
                                                        device, out_dtype, shard_bytes)
            _copy_processor_files(base_dir, checkpoint.ckpt_dir, temp)
            write_vllm_layout(temp)  # the tensor names vLLM reads as well as transformers (export_layout.py)
            _write_sft_args(checkpoint, resolved, target, temp, report.method, dtype if out_dtype else None)
            _check_complete(temp, base_dir)
            if check_load:
                _check_loads(temp, resolved.family)
            report.files = sorted(p.name for p in temp.iterdir())
            if target.exists() and not overwrite:  # appeared while we merged (another export)
                raise UserError(f"{target} appeared while merging; pass --overwrite true to replace it")
            publish(temp, target)  # --overwrite: the old directory goes only once the new one is complete
        except BaseException as error:
            shutil.rmtree(temp, ignore_errors=True)
            full = isinstance(error, Exception) and disk_full(
                error, target.parent, f"{target.name} was not written (its partial files are removed)")
            if full:
                raise full from None
            raise
    report.seconds = time.perf_counter() - started
    _note(f"merged checkpoint written to {target}")
    return report


# ---- reading the checkpoint -------------------------------------------------------------------------------
def _read_lora_checkpoint(ckpt_dir, base_model=None):
    """The checkpoint; an adapter trained elsewhere (no sft_args.json) is accepted too: read_checkpoint takes its
    base from ms-swift 3.x/4.x's args.json, else from peft's adapter_config.json."""
    from swiftlite.models.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(ckpt_dir)
    if checkpoint.is_adapter and not (checkpoint.base_model or checkpoint.model_type or base_model):
        raise UserError(f"{checkpoint.ckpt_dir / 'adapter_config.json'}: no base_model_name_or_path and no "
                        f"{SFT_ARGS_FILE} saying which base model the adapter belongs to; name it with --model")
    return checkpoint


def _is_export_of(target: Path, ckpt_dir: Path) -> bool:
    try:
        args = read_sft_args(target)
        return (target / "config.json").is_file() and args["merged_from"] == str(ckpt_dir)
    except (OSError, KeyError, UserError):
        return False


def _check_target_is_safe(target: Path, ckpt_dir: Path, base_dir: Path) -> None:
    for source, what in ((ckpt_dir, "the checkpoint"), (base_dir.resolve(), "the base model")):
        if target == source or source.is_relative_to(target):
            raise UserError(f"--output_dir {target}: would replace {what} ({source}); choose another directory")
    if target.exists() and not target.is_dir():
        raise UserError(f"--output_dir {target}: exists and is not a directory")


# ---- the peft merge: anything the direct merge does not cover ----------------------------------------------
def _merge_with_peft(ckpt_dir: Path, base_dir: Path, family, out_dir: Path, device, out_dtype, shard_bytes) -> int:
    """Load the base directly in its dtype, attach the adapter, merge_and_unload in place (no copy), save."""
    from peft.tuners.lora import LoraLayer

    import torch

    from swiftlite.models.checkpoint import load_adapter
    from swiftlite.models.loading import load_model

    torch_dtype = getattr(torch, out_dtype) if out_dtype else _config_dtype(base_dir)
    model = load_model(base_dir, family, torch_dtype, device=str(_torch_device(device)))
    model = load_adapter(model, ckpt_dir)
    layers = sum(1 for module in model.modules() if isinstance(module, LoraLayer))
    model = model.merge_and_unload(progressbar=sys.stderr.isatty())
    model.save_pretrained(out_dir, max_shard_size=shard_bytes)
    return layers


def _config_dtype(base_dir: Path):
    import torch

    config = read_json(base_dir / "config.json")
    name = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return getattr(torch, name) if name in ("bfloat16", "float16", "float32") else torch.float32


# ---- the other files --------------------------------------------------------------------------------------
def _copy_processor_files(base_dir: Path, ckpt_dir: Path, out_dir: Path) -> None:
    """Everything of the base dir except weights (tokenizer, processors, chat template, generation config, code,
    licence), then the checkpoint's own tokenizer/processor files, which are what training used."""
    for path in non_weight_files(base_dir):
        shutil.copyfile(path, out_dir / path.name)
    for path in processor_files(ckpt_dir):
        shutil.copyfile(path, out_dir / path.name)


def _write_sft_args(checkpoint, resolved, target: Path, out_dir: Path, method: str, dtype: str | None) -> None:
    args = dict(checkpoint.args)
    args.update(
        model_type=args.get("model_type") or resolved.model_type,
        template_type=args.get("template_type") or resolved.template_type,
        sft_type="full",
        model_id_or_path=str(target),
        merged_from=str(checkpoint.ckpt_dir),
        base_model_id_or_path=checkpoint.base_model or str(resolved.model_dir),
        merge_method=method,
    )
    if dtype:
        args["dtype"] = dtype
    write_sft_args(out_dir, args)


def _check_complete(out_dir: Path, base_dir: Path) -> None:
    """Cheap checks that the directory is a loadable checkpoint, before it gets its final name."""
    names = {path.name for path in out_dir.iterdir()}
    index = out_dir / "model.safetensors.index.json"
    shards = set(read_json(index)["weight_map"].values()) if index.is_file() else {"model.safetensors"}
    if not {"config.json", *shards} <= names:
        raise RuntimeError(f"the merge left {out_dir} without {sorted({'config.json', *shards} - names)}")
    if not names & {"tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json"}:
        _note(f"warning: the base model {base_dir} has no tokenizer files, so neither has the merged directory")


def _check_loads(out_dir: Path, family) -> None:
    """--check_load: load the result the way users will (transformers Auto classes) and run one forward pass."""
    import torch

    from swiftlite.models.loading import load_model, load_tokenizer

    _note("checking that the merged directory loads ...")
    tokenizer = load_tokenizer(out_dir, family)
    model = load_model(out_dir, family, None, device="cpu")
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([tokenizer("hello").input_ids])).logits
    if not bool(torch.isfinite(logits).all()):
        raise UserError(f"the merged model in {out_dir} computes NaN/inf logits; nothing was written")
    del model


# ---- small helpers ----------------------------------------------------------------------------------------
def parse_size(size: str | int) -> int:
    """'5GB' -> 5*10**9 bytes, '2GiB' -> 2*2**30, '500MB', '100KB', or a plain number of bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(size).upper())
    if match is None or float(match.group(1)) <= 0:
        raise UserError(f"--max_shard_size {size}: expected a size such as 5GB, 500MB or 2GiB")
    unit = match.group(2).rstrip("B")
    power = " KMGT".index(unit[:1] or " ")
    base = 1024 if unit.endswith("I") else 1000
    return int(float(match.group(1)) * base ** power)


def _check_device(device: str | None) -> str:
    name = (device or "cpu").strip().lower()
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", name):
        raise UserError(f"--device {device}: expected cpu, cuda, cuda:N or auto")
    return name


def _torch_device(name: str):
    """The device of a merge through peft (the direct merge streams on the CPU: it is I/O-bound)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def _output_dtype(dtype: str | None) -> str | None:
    """None keeps every tensor's own dtype (the base's); otherwise float32, float16 or bfloat16."""
    from swiftlite.models.loading import DTYPE_ALIASES

    if dtype in (None, "", "auto"):
        return None
    if str(dtype).lower() not in DTYPE_ALIASES:
        raise UserError(f"--dtype {dtype}: expected auto, bf16, fp16 or fp32")
    return DTYPE_ALIASES[str(dtype).lower()]


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
