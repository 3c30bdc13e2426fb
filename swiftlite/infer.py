"""Chat with a model, or run it over a dataset: base models, `mm sft` checkpoints (LoRA or full) and merged exports.

    mm infer --model_type qwen2-vl-2b-instruct                 # interactive chat (see docs/infer.md)
    mm infer --ckpt_dir output/qwen2-vl-2b-instruct/v0-20240101-120000/checkpoint-100 --load_dataset_config true
    mm infer --model DIR --val_dataset test.jsonl --max_new_tokens 64

Without a dataset the command opens an interactive chat (prompt `<<< `; images inline as `<img>path</img>`).
With `--val_dataset` (or `--load_dataset_config true`, which re-creates the sft run's held-out split) it runs
every row in batches and writes `<dir>/infer_result/<YYYYMMDD-HHMMSS>.jsonl`, one line per row with system,
query, response, label, history and images; chat turns are saved there too.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated

from swiftlite.errors import UserError
from swiftlite.options import flag, opt

G = "Generation: "  # help prefix that groups the generation flags in --help


def infer(
    model_type: Annotated[str | None, opt("model_type", "Registered model type, e.g. qwen2-vl-2b-instruct (`mm list`).")] = None,
    model: Annotated[str | None, opt("model", "Local checkpoint directory or hub id.", "--model_id_or_path", "--model-id-or-path")] = None,
    ckpt_dir: Annotated[str | None, opt("ckpt_dir", "Checkpoint of `mm sft` (LoRA or full) or of `mm export` (-merged); "
                                        "its sft_args.json names the base model, template, system and dtype.", "--adapters")] = None,
    merge_lora: Annotated[bool, flag("merge_lora", "Merge the LoRA checkpoint into <ckpt_dir>-merged first (as `mm export "
                                     "--merge_lora true`), then infer from the merged weights.")] = False,
    template_type: Annotated[str | None, opt("template_type", "Template override (default: the model's; `mm list templates`).", "--template")] = None,
    system: Annotated[str | None, opt("system", "System prompt (default: the checkpoint's sft system, else the template's).")] = None,
    use_hf: Annotated[bool | None, flag("use_hf", "Download from the Hugging Face Hub instead of ModelScope (also USE_HF=1).")] = None,
    dtype: Annotated[str, opt("dtype", "auto, bf16, fp16 or fp32 (auto: the checkpoint's dtype on GPU, fp32 on CPU).", "--torch_dtype")] = "auto",
    device_map: Annotated[str | None, opt("device_map", "transformers device_map, e.g. auto to spread a large model over "
                                          "all visible GPUs (default: one device, CUDA when available).")] = None,
    max_pixels: Annotated[int | None, opt("max_pixels", "Downscale larger images to at most this many pixels.")] = None,
    max_new_tokens: Annotated[int | None, opt("max_new_tokens", G + "longest answer in tokens (default: generation_config, else 512).")] = None,
    temperature: Annotated[float | None, opt("temperature", G + "sampling temperature; 0 means greedy (default: generation_config).")] = None,
    top_p: Annotated[float | None, opt("top_p", G + "nucleus sampling probability mass, in (0, 1].")] = None,
    top_k: Annotated[int | None, opt("top_k", G + "sample among the k most likely tokens (0: all).")] = None,
    repetition_penalty: Annotated[float | None, opt("repetition_penalty", G + "penalty > 1 discourages repeating tokens.")] = None,
    do_sample: Annotated[bool | None, flag("do_sample", G + "sample (true) or decode greedily (false).")] = None,
    seed: Annotated[int | None, opt("seed", G + "seed for sampling (row i of a batch uses seed+i) and for --show_dataset_sample.")] = None,
    stop_words: Annotated[list[str] | None, opt("stop_words", G + "extra strings that end an answer: --stop_words 'Observation:' END.")] = None,
    stream: Annotated[bool, flag("stream", "Print the answer token by token in the chat.")] = True,
    val_dataset: Annotated[list[str] | None, opt("val_dataset", "Dataset files to run (same formats as `mm sft --dataset`): batch mode.")] = None,
    load_dataset_config: Annotated[bool, flag("load_dataset_config", "Run the held-out rows of the sft run of --ckpt_dir "
                                              "(its recorded dataset, val_dataset, dataset_test_ratio and seed).", "load_data_args")] = False,
    show_dataset_sample: Annotated[int, opt("show_dataset_sample", "Run only N rows (a seeded sample, in file order); -1: all.", "--val_dataset_sample")] = -1,
    max_batch_size: Annotated[int, opt("max_batch_size", "Rows generated together in batch mode.")] = 16,
    strict: Annotated[bool, flag("strict", "Stop at the first unusable dataset row instead of skipping it.")] = False,
    eval_human: Annotated[bool | None, flag("eval_human", "Force the interactive chat (true) or batch mode (false); "
                                            "default: chat unless a dataset is given.")] = None,
    save_result: Annotated[bool, flag("save_result", "Write results (batch rows and chat turns) to infer_result/*.jsonl.")] = True,
    result_dir: Annotated[str | None, opt("result_dir", "Where infer_result/ goes (default: --ckpt_dir, else the model directory).")] = None,
    result_path: Annotated[str | None, opt("result_path", "Write the results to this .jsonl file instead (appended to "
                                           "when it exists; ms-swift 3.x/4.x).")] = None,
    infer_backend: Annotated[str, opt("infer_backend", "pt (= transformers, ms-swift 4.x's name): generation with "
                                      "transformers; vllm: generation with vLLM, in the chat and over --val_dataset "
                                      "(docs/infer.md#vllm).")] = "pt",
    # The vLLM flags' second spellings are ms-swift 4.x's (--vllm_tensor_parallel_size, ...); 2.x and 3.x had these.
    tensor_parallel_size: Annotated[int, opt("tensor_parallel_size", "vLLM: GPUs one model is split over.",
                                             "--vllm_tensor_parallel_size")] = 1,
    gpu_memory_utilization: Annotated[float, opt("gpu_memory_utilization", "vLLM: share of GPU memory it may take.",
                                                 "--vllm_gpu_memory_utilization")] = 0.9,
    max_model_len: Annotated[int | None, opt("max_model_len", "vLLM: longest prompt + reply in tokens (default: "
                                             "the model's).", "--vllm_max_model_len")] = None,
    limit_mm_per_prompt: Annotated[str | None, opt("limit_mm_per_prompt", "vLLM: most media items per prompt, e.g. "
                                                   "image=4 or '{\"image\": 4}'.",
                                                   "--vllm_limit_mm_per_prompt")] = None,
    enforce_eager: Annotated[bool, flag("enforce_eager", "vLLM: no CUDA graphs (starts faster, decodes slower).",
                                        "vllm_enforce_eager")] = False,
    verbose: Annotated[bool, flag("verbose", "In batch mode, print each row's query, label and response.")] = False,
) -> None:
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                    repetition_penalty=repetition_penalty, do_sample=do_sample, seed=seed)
    check_flags(sampling, dtype, max_batch_size, show_dataset_sample)
    infer_backend = check_infer_backend(infer_backend)
    from swiftlite.deploy import vllm_flags

    vllm_options = vllm_flags(infer_backend, tensor_parallel_size, gpu_memory_utilization, max_model_len,
                              limit_mm_per_prompt, enforce_eager)
    for name, value in (("max_model_len", max_model_len), ("limit_mm_per_prompt", limit_mm_per_prompt)):
        if value is not None and infer_backend != "vllm":  # mm infer on pt has no such limit to set
            raise UserError(f"--{name} is a vLLM flag here (also when spelled --vllm_{name}): it needs "
                            "--infer_backend vllm")
    if result_path and result_dir:
        raise UserError("--result_path names the result file, --result_dir its folder: give one")
    if merge_lora and not ckpt_dir:
        raise UserError("--merge_lora true needs --ckpt_dir (a LoRA checkpoint of `mm sft`)")
    batch_mode = bool(val_dataset) or load_dataset_config
    interactive = eval_human if eval_human is not None else not batch_mode
    if not interactive and not batch_mode:
        raise UserError("--eval_human false needs rows to run: pass --val_dataset FILE or --load_dataset_config true")

    # Find the model and read the rows first (cheap), so that a wrong path fails before anything heavy runs.
    from swiftlite.models.checkpoint import checkpoint_given_as_model

    model, ckpt_dir = checkpoint_given_as_model(model, ckpt_dir)
    target = resolve_target(model_type, model, ckpt_dir, use_hf, template_type)
    if not interactive:
        rows, skipped = dataset_rows(target, val_dataset, load_dataset_config, strict, seed, show_dataset_sample)
    if merge_lora:
        ckpt_dir = merged_checkpoint(ckpt_dir, model)
        target = resolve_target(None, None, ckpt_dir, use_hf, template_type)
    writer = ResultWriter(result_base(result_dir, target), result_path) if save_result else None
    load = dict(target.load_kwargs, dtype=dtype, device_map=device_map, use_hf=use_hf, system=system,
                max_pixels=max_pixels, template_type=template_type)

    if infer_backend == "vllm":
        load.pop("device_map")  # vLLM places the model itself (--tensor_parallel_size)
        load["options"] = vllm_options
    if interactive:
        run_chat(target, load, sampling, stop_words, stream, writer, infer_backend)
    else:
        loaded = load_model(infer_backend, load)
        run_batch(loaded, rows, sampling, stop_words, max_batch_size, writer, verbose, strict, skipped)


def load_model(infer_backend: str, load: dict):
    """load_for_inference (pt: transformers), or load_for_vllm (vllm: its engine in place of the model)."""
    if infer_backend == "vllm":
        from swiftlite.engine.vllm_engine import load_for_vllm

        return load_for_vllm(**load)
    from swiftlite.models.checkpoint import load_for_inference

    return load_for_inference(**load)


# ---- flags -----------------------------------------------------------------------------------------------
def check_flags(sampling: dict, dtype: str, max_batch_size: int, show_dataset_sample: int) -> None:
    from swiftlite.models.loading import DTYPE_ALIASES

    # inf passes `>= 0` (typer reads it as a float): --temperature inf or --repetition_penalty inf sampled
    # garbage with exit 0, so every number must be finite too. Row i samples with seed + i, and torch's
    # generator takes no seed past 2**64 - 1 (a traceback after loading), so the seed is an int64, as the server's.
    checks = [
        ("max_new_tokens", lambda v: v >= 1, "a positive number of tokens"),
        ("temperature", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0 (0 means greedy)"),
        ("top_p", lambda v: 0 < v <= 1, "a number in (0, 1]"),
        ("top_k", lambda v: v >= 0, "an integer >= 0"),
        ("repetition_penalty", lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
        ("seed", lambda v: -(2 ** 63) <= v < 2 ** 63, "a whole number in [-2**63, 2**63)"),
    ]
    for name, valid, expected in checks:
        if sampling[name] is not None and not valid(sampling[name]):
            raise UserError(f"--{name} {sampling[name]}: expected {expected}")
    if dtype.lower() != "auto" and dtype.lower() not in DTYPE_ALIASES:
        raise UserError(f"--dtype {dtype}: expected auto, bf16, fp16 or fp32")
    if max_batch_size < 1:
        raise UserError(f"--max_batch_size {max_batch_size}: expected a positive number")
    if show_dataset_sample == 0 or show_dataset_sample < -1:
        raise UserError(f"--show_dataset_sample {show_dataset_sample}: expected a positive number of rows, or -1 for all")


def check_infer_backend(infer_backend: str) -> str:
    """--infer_backend: pt (transformers) or vllm; ms-swift's other engines are not wired. Returns pt or vllm."""
    backend = infer_backend.lower()
    if backend in ("sglang", "lmdeploy"):
        raise UserError(f"--infer_backend {infer_backend}: not available in swiftlite yet; use --infer_backend pt "
                        "(transformers) or vllm")
    if backend == "transformers":
        return "pt"
    if backend not in ("pt", "vllm"):
        raise UserError(f"--infer_backend {infer_backend}: expected pt (or transformers) or vllm")
    return backend


# ---- which model -----------------------------------------------------------------------------------------
@dataclass
class Target:
    """What to load, found without loading anything: keyword arguments for load_for_inference and facts."""

    load_kwargs: dict
    model_dir: Path
    template_meta: object
    checkpoint: object = None  # swiftlite.models.checkpoint.Checkpoint with --ckpt_dir


def resolve_target(model_type, model, ckpt_dir, use_hf, template_type) -> Target:
    from swiftlite.models import MODEL_TYPES
    from swiftlite.models.checkpoint import read_checkpoint, resolve_checkpoint
    from swiftlite.models.loading import resolve_model
    from swiftlite.templates import get_template_meta

    if ckpt_dir:
        checkpoint = read_checkpoint(ckpt_dir)
        # ms-swift 3.x/4.x users name the base too (`--model BASE --adapters CKPT`): it is the base of an adapter
        # that records none (or one not found here), and needs no comment when it is the recorded one.
        resolved = resolve_checkpoint(checkpoint, use_hf, base_model=model)
        same_base = model and Path(model).expanduser().resolve() == Path(resolved.model_dir).resolve()
        if model_type or (model and not same_base):
            ignored = " and ".join(f"--{n}" for n, v in (("model_type", model_type), ("model", model)) if v)
            print(f"[INFO:swiftlite] {ignored} ignored: the checkpoint's sft_args.json names its model", file=sys.stderr)
        meta = get_template_meta(template_type or resolved.template_type)
        load = {"ckpt_dir": str(checkpoint.ckpt_dir)} | ({"model_id_or_path": model} if same_base else {})
        return Target(load, resolved.model_dir, meta, checkpoint)
    resolved = resolve_model(model_type, model, use_hf)
    registered = resolved.model_type if resolved.model_type in MODEL_TYPES else None
    meta = get_template_meta(template_type or resolved.template_type)
    return Target({"model_type": registered, "model_id_or_path": str(resolved.model_dir)}, resolved.model_dir, meta)


def merged_checkpoint(ckpt_dir: str, base_model: str | None = None) -> str:
    """--merge_lora true: the merged directory `mm export` writes (re-used when already there)."""
    from swiftlite.models.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(ckpt_dir)
    if not checkpoint.is_adapter:
        print(f"[INFO:swiftlite] --merge_lora: {ckpt_dir} already holds full weights; nothing to merge", file=sys.stderr)
        return ckpt_dir
    try:
        from swiftlite.export import merge_lora_checkpoint
    except ImportError:
        raise UserError("--merge_lora true needs `mm export`'s LoRA merge, which this installation lacks") from None
    # an earlier merge of this checkpoint is re-used; --model is the base of an adapter that records none here
    merged = merge_lora_checkpoint(ckpt_dir, reuse_existing=True, base_model=base_model)
    print(f"[INFO:swiftlite] merged LoRA weights: {merged}", file=sys.stderr)
    return str(merged)


# ---- datasets --------------------------------------------------------------------------------------------
def dataset_rows(target: Target, val_dataset, load_dataset_config: bool, strict: bool, seed: int | None,
                 show_dataset_sample: int) -> tuple[list, int]:
    from swiftlite import data

    if load_dataset_config and not val_dataset:
        args = target.checkpoint.args if target.checkpoint is not None else {}
        if not args.get("dataset"):
            raise UserError("--load_dataset_config true needs --ckpt_dir of an `mm sft` checkpoint whose sft_args.json "
                            "records its dataset")
        # Exactly the sft run's split: the same files, val_dataset, test ratio, seed and strictness.
        recorded = {key: args[key] for key in ("dataset", "val_dataset", "dataset_test_ratio", "seed", "strict", "use_hf")
                    if args.get(key) is not None}
        _, rows, skipped = data.load_train_val(**recorded)
        if not rows:
            raise UserError(f"--load_dataset_config: the sft run of {target.checkpoint.ckpt_dir} held out no rows "
                            "(dataset_test_ratio 0 and no val_dataset); pass --val_dataset FILE")
    else:
        try:
            # Each skipped row named, as the rows skipped later (at encoding) are: a count alone hid which.
            rows, skipped = data.load_dataset_rows(
                list(val_dataset), strict, 42 if seed is None else seed, require_response=False,
                on_skip=lambda problem: print(f"[WARNING:swiftlite] skipped {problem}", file=sys.stderr))
        except UserError as error:  # data.py names the sft flag; here the files came from --val_dataset
            message = str(error)
            raise UserError(message.replace("--dataset ", "--val_dataset ", 1)) from None
        if not rows:
            # Name the first row's problem (e.g. a video without torchvision): read again, stopping there.
            try:
                data.load_dataset_rows(list(val_dataset), True, 42 if seed is None else seed, require_response=False)
                first = ""
            except UserError as error:
                first = f"; the first: {str(error).replace(' (pass --strict false to skip bad rows)', '')}"
            raise UserError(f"--val_dataset {' '.join(val_dataset)}: no usable rows ({skipped} skipped){first}")
    if show_dataset_sample != -1 and show_dataset_sample < len(rows):
        import random

        keep = sorted(random.Random(42 if seed is None else seed).sample(range(len(rows)), show_dataset_sample))
        rows = [rows[index] for index in keep]
    return rows, skipped


# ---- results ---------------------------------------------------------------------------------------------
def result_base(result_dir: str | None, target: Target) -> Path:
    if result_dir:
        return Path(result_dir).expanduser()
    if target.checkpoint is not None:
        return target.checkpoint.ckpt_dir
    return target.model_dir


class ResultWriter:
    """<base>/infer_result/<YYYYMMDD-HHMMSS>.jsonl (or the file --result_path names, appended to), created at
    the first record and flushed after each one."""

    def __init__(self, base: Path, result_path: str | None = None):
        self.base = Path(base)
        self.result_path = Path(result_path).expanduser() if result_path else None
        self.stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.path: Path | None = None
        self.count = 0

    def _open_path(self) -> Path:
        if self.result_path is not None:
            try:
                self.result_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(f"--result_path {self.result_path}: cannot create its folder: "
                                f"{error.strerror}") from None
            return self.result_path
        folder = self.base / "infer_result"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot write results to {folder}: {error.strerror}; pass --result_dir DIR "
                            "or --save_result false") from None
        path, suffix = folder / f"{self.stamp}.jsonl", 1
        while path.exists():  # two runs within the same second
            path, suffix = folder / f"{self.stamp}-{suffix}.jsonl", suffix + 1
        return path

    def write(self, record: dict) -> None:
        if self.path is None:
            self.path = self._open_path()
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.count += 1

    def report(self) -> None:
        if self.path is not None:
            print(f"[INFO:swiftlite] saved {self.count} result(s) to {self.path}", file=sys.stderr)


# ---- interactive -----------------------------------------------------------------------------------------
def run_chat(target: Target, load: dict, sampling: dict, stop_words, stream: bool, writer,
             infer_backend: str = "pt") -> None:
    from swiftlite.chat import ChatSession

    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and arrow-key history for input())
        except ImportError:  # pragma: no cover - not on every platform
            pass
    if infer_backend == "vllm":
        import os

        # vLLM logs its start-up (dozens of INFO lines) to stdout, set up inside the engine's start, where the
        # chat's answers go and the user types: its warnings only, on stderr (either variable set wins).
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    loader = BackgroundLoad(load, infer_backend)  # the model loads while the user types the first question
    state = {}

    def make_params():
        from swiftlite.infer_api import sampling_params

        return sampling_params(state["model"], None, stop_words, **sampling)

    def get_loaded():
        loaded = loader.get()
        state["model"] = loaded.model
        return loaded

    session = ChatSession(get_loaded, target.template_meta, make_params, stream=stream, writer=writer)
    try:
        session.run()
    finally:
        if writer is not None:
            writer.report()


class BackgroundLoad:
    """load_model (transformers' or vLLM's) in a thread. Its log lines and warnings are held back (they would
    land in the middle of what the user is typing) and printed when the model is first needed; a failure is
    raised then."""

    def __init__(self, load: dict, infer_backend: str = "pt"):
        import threading

        self.load = load
        self.infer_backend = infer_backend
        self.loaded = None
        self.error: BaseException | None = None
        self.messages: list[str] = []
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._work, name="swiftlite-load", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        import logging
        import signal
        import warnings

        # The kernel hands a process's SIGINT to any thread that does not block it. Delivered here, Python
        # still sets its flag, but the main thread stays asleep in input() and Ctrl-C at the prompt hung the
        # chat until the next key (seen about 1 run in 15 on a loaded machine). Block the signals in this
        # thread (and in the threads torch starts from it), so that they always wake the main thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        held = self.messages

        class Hold(logging.Handler):
            def emit(self, record):
                held.append(self.format(record))

        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            root = logging.getLogger("transformers")
            saved, root.handlers = root.handlers, [Hold()]
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("default")
                    self.loaded = load_model(self.infer_backend, self.load)
                held += [f"{w.category.__name__}: {w.message}" for w in caught]
            finally:
                root.handlers = saved
                hf_logging.enable_progress_bar()
        except BaseException as error:  # re-raised in the main thread by get()
            self.error = error

    def get(self):
        if self.thread.is_alive():
            print("[INFO:swiftlite] loading the model...", file=sys.stderr, flush=True)
            self.thread.join()
        for message in self.messages:
            print(message, file=sys.stderr)
        self.messages.clear()
        if self.error is not None:
            raise self.error
        return self.loaded


# ---- batch -----------------------------------------------------------------------------------------------
def split_row(conversation) -> dict:
    """A dataset conversation -> the prompt to run and the result fields (query, label, history, ...)."""
    from swiftlite.conversation import Conversation

    messages = conversation.messages
    label = None
    if messages[-1]["role"] == "assistant":
        label = messages[-1]["content"]
        messages = messages[:-1]
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    body = messages[1:] if system is not None else messages
    history = [[body[i]["content"], body[i + 1]["content"]] for i in range(0, len(body) - 1, 2)]
    return {
        "prompt": Conversation(messages, list(conversation.images), list(conversation.audios),
                               tools=conversation.tools, videos=list(conversation.videos)),
        "record": {"system": system, "query": body[-1]["content"], "response": None, "label": label,
                   "history": history, "images": [str(i) if isinstance(i, Path) else i for i in conversation.images]},
        "audios": list(conversation.audios),
        "videos": [str(v) if isinstance(v, Path) else v for v in conversation.videos],
    }


def run_batch(loaded, rows: list, sampling: dict, stop_words, max_batch_size: int, writer, verbose: bool,
              strict: bool, skipped: int) -> None:
    """Every row through the model, `max_batch_size` at a time, with a progress bar; results in file order."""
    from tqdm import tqdm

    from swiftlite.infer_api import quiet_generation_flag_warning

    quiet_generation_flag_warning()
    started, generated, failed = time.perf_counter(), 0, 0
    # The bar is closed (its line finished) before an error propagates, so the error is the last line.
    with tqdm(total=len(rows), desc="infer", unit="row", file=sys.stderr, dynamic_ncols=True) as progress:
        for start in range(0, len(rows), max_batch_size):
            records, tokens, batch_failed = run_rows(loaded, rows[start:start + max_batch_size], start, sampling,
                                                     stop_words, strict, progress)
            failed += batch_failed
            generated += tokens
            for record in records:
                if writer is not None:
                    writer.write(record)
                if verbose:
                    progress.write(f"[QUERY] {record['query']}\n[LABELS] {record['label']}\n"
                                   f"[RESPONSE] {record['response']}\n{'-' * 50}")
            progress.update(len(records) + batch_failed)
    seconds = time.perf_counter() - started
    print(f"[INFO:swiftlite] {len(rows) - failed} row(s), {generated} tokens generated in {seconds:.2f} s "
          f"({generated / max(seconds, 1e-9):.1f} tokens/s)", file=sys.stderr)
    if skipped or failed:
        print(f"[INFO:swiftlite] {skipped + failed} row(s) skipped (pass --strict true to stop at the first)", file=sys.stderr)
    if writer is not None:
        writer.report()
    if rows and failed == len(rows):
        # Answering nothing is a failure, not a run that skipped some rows.
        raise UserError(f"none of the {len(rows)} row(s) could be encoded (see the warnings above)")


def run_rows(loaded, rows: list, first_index: int, sampling: dict, stop_words, strict: bool, progress):
    """One batch: encode each row (a bad one is skipped, or stops the run with --strict), generate together.

    Returns (result records, tokens generated, rows skipped)."""
    from swiftlite.engine.generate import generate
    from swiftlite.infer_api import sampling_params
    from swiftlite.media import MediaError
    from swiftlite.templates.base import TemplateError

    template = loaded.template
    encoded, parts, params, failed = [], [], [], 0
    for index, row in enumerate(rows, first_index):
        part = split_row(row.conversation)
        try:
            encoded.append(template.encode(part["prompt"], add_generation_prompt=True))
        except (MediaError, TemplateError, ValueError) as error:  # ValueError: an image the processor refuses
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if strict:
                raise UserError(f"{row.source}: {message}") from None
            progress.write(f"[WARNING:swiftlite] skipped {row.source}: {message}", file=sys.stderr)
            failed += 1
            continue
        parts.append(part)
        # A seed per row (seed + index) makes each row's sample independent of the batch it lands in.
        row_sampling = dict(sampling, seed=None if sampling["seed"] is None else sampling["seed"] + index)
        params.append(sampling_params(loaded.model, None, stop_words, **row_sampling))
    if not encoded:
        return [], 0, failed
    records, tokens = [], 0
    # vLLM's engine (--infer_backend vllm) generates the rows itself; a transformers model goes through ours.
    run = getattr(loaded.model, "generate_rows", None) or (lambda *args: generate(loaded.model, *args))
    for part, result in zip(parts, run(template, encoded, params)):
        record = dict(part["record"], response=result.text)
        if record["system"] is None:
            record["system"] = template.default_system
        if part["audios"]:
            record["audios"] = part["audios"]
        if part.get("videos"):
            record["videos"] = part["videos"]
        records.append(record)
        tokens += len(result.token_ids)
    return records, tokens, failed
