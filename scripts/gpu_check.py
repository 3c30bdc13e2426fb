"""The CUDA paths of swiftlite on one GPU, on tiny checkpoints, in a few minutes; prints one table.

Run through scripts/gpu_check.sh (which says so and exits 0 on a machine without CUDA). Each check runs the
real `mm` commands (or, for the logits comparison, the library) and gets a row: ok / FAIL / skip, its wall
time, the peak GPU memory used while it ran (nvidia-smi, sampled; torch's own peak for in-process checks)
and a note. Exit code 1 when a check failed.

`python scripts/gpu_check.py --rehearse_on_cpu` runs the same checks on the CPU, to check the script itself
(fp16 then trains without autocast, and nvidia-smi reports nothing).

Checks: bf16 LoRA sft, export (merge), infer, deploy (one chat request); the fp16 path with trainable
weights (full fine-tune: trainable weights kept fp32 under fp16 autocast, so the gradient scaler can unscale);
`--deepspeed default-zero2` with one process; merged == adapter logits; the vLLM backend when installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The checks share 7.5 minutes: each waits at most for what is left of it, so the table is printed within the
# 8 minutes gpu_check.sh gives the whole script (its `timeout 480` only catches a hang outside the checks).
BUDGET_S = 450
VAL = ROOT / "examples" / "shapes" / "val.json"
ROWS: list[tuple[str, str, str, str, str]] = []  # check, result, seconds, peak MiB, note


class GpuMemorySampler:
    """Peak memory used on GPU 0 (all processes) while a check runs, sampled with nvidia-smi."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> int:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, timeout=5).stdout
            return int(out.strip().splitlines()[0])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used())
            self._stop.wait(0.25)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def record(check: str, result: str, seconds: float, peak_mib: int | str, note: str) -> None:
    ROWS.append((check, result, f"{seconds:.1f}", str(peak_mib), note))
    print(f"gpu_check: {check}: {result} ({seconds:.1f} s) {note}", file=sys.stderr, flush=True)


class OverBudget(Exception):
    """A check still running when the budget ran out (its process was killed)."""


def remaining() -> float:
    return BUDGET_S - (time.time() - START)


def mm(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m swiftlite ARGS`, killed after `timeout` seconds or when the budget runs out, whichever is first."""
    environment = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
                       TRANSFORMERS_VERBOSITY="error", **(env or {}))
    limit = min(timeout, remaining())
    try:
        return subprocess.run([sys.executable, "-m", "swiftlite", *args], capture_output=True, text=True,
                              env=environment, timeout=max(limit, 0.1))
    except subprocess.TimeoutExpired:
        if limit < timeout:
            raise OverBudget(f"killed after {limit:.0f} s: the {BUDGET_S} s budget ran out") from None
        raise OverBudget(f"mm {args[0]} did not finish in {timeout:.0f} s") from None


def run_check(name: str, function) -> object:
    started = time.time()
    if remaining() <= 0:
        record(name, "skip", 0.0, "-", f"over the {BUDGET_S} s budget")
        return None
    try:
        with GpuMemorySampler() as sampler:
            result, note = function()
        record(name, result, time.time() - started, sampler.peak or "-", note)
        return result
    except OverBudget as error:
        record(name, "FAIL", time.time() - started, "-", str(error))
        return None
    except Exception as error:  # one failed check must not hide the others
        last = (str(error).strip().splitlines() or [type(error).__name__])[-1][:200]
        record(name, "FAIL", time.time() - started, "-", f"{type(error).__name__}: {last}")
        return None


def last_line(process: subprocess.CompletedProcess) -> str:
    lines = (process.stderr or process.stdout or "").strip().splitlines()
    return lines[-1][:200] if lines else f"exit code {process.returncode}"


def checkpoint_of(process: subprocess.CompletedProcess) -> Path:
    found = re.findall(r"last_model_checkpoint: (\S+)", process.stderr)
    if process.returncode != 0 or not found:
        raise RuntimeError(last_line(process))
    return Path(found[-1])


def final_loss(checkpoint: Path) -> float:
    logs = [json.loads(line) for line in (checkpoint.parent / "logging.jsonl").read_text().splitlines()]
    return [log["loss"] for log in logs if "loss" in log][-1]


def main() -> int:
    import torch

    from swiftlite.testing import build_tiny_checkpoint

    device = "cpu" if "--rehearse_on_cpu" in sys.argv else "cuda:0"
    bf16_supported = torch.cuda.is_bf16_supported() if device != "cpu" else True

    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    # head_dim 32 (hidden 128, 2 heads): the smallest that vLLM's attention backends take (its row below).
    base = build_tiny_checkpoint("qwen2-vl", work / "qwen2-vl", hidden_size=128, num_heads=2)
    data = ROOT / "examples" / "shapes" / "train.json"
    common = ["--dataset", str(data), "--batch_size", "4", "--gradient_accumulation_steps", "1",
              "--dataloader_num_workers", "0", "--logging_steps", "5", "--dataset_test_ratio", "0",
              "--eval_steps", "1000", "--save_steps", "1000"]
    state: dict = {}
    name = torch.cuda.get_device_name(0) if device != "cpu" else "CPU rehearsal"
    print(f"gpu_check: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"bf16 supported: {bf16_supported}; work dir {work}", flush=True)

    def lora_sft():
        dtype = "bf16" if bf16_supported else "fp16"
        process = mm("sft", "--model", str(base), *common, "--max_steps", "30", "--learning_rate", "5e-3",
                     "--dtype", dtype, "--output_dir", str(work / "lora"))
        state["lora"] = checkpoint_of(process)
        precision = re.search(r"mm sft: precision: (.*)", process.stderr)
        return "ok", f"--dtype {dtype}: loss {final_loss(state['lora']):.3f}; {precision.group(1) if precision else ''}"

    def export():
        process = mm("export", "--ckpt_dir", str(state["lora"]), "--merge_lora", "true")
        state["merged"] = Path(str(state["lora"]) + "-merged")
        if process.returncode != 0 or not (state["merged"] / "config.json").is_file():
            raise RuntimeError(last_line(process))
        merged_line = [line for line in process.stdout.splitlines() if line.startswith("merged ")]
        return "ok", (merged_line or [""])[0].split(" into ")[0]

    def infer():
        process = mm("infer", "--ckpt_dir", str(state["merged"]), "--val_dataset", str(VAL), "--temperature", "0",
                     "--max_new_tokens", "4")
        results = re.findall(r"(\S+\.jsonl)", process.stdout + process.stderr)
        if process.returncode != 0 or not results:
            raise RuntimeError(last_line(process))
        answered = len(Path(results[-1]).read_text().splitlines())
        return "ok", f"{answered} rows of {VAL.name} answered"

    def deploy():
        import httpx

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        environment = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        server = subprocess.Popen([sys.executable, "-m", "swiftlite", "deploy", "--ckpt_dir", str(state["merged"]),
                                   "--port", str(port)], env=environment, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        try:
            began = time.time()
            deadline = began + min(120, remaining())
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"mm deploy exited: {server.stderr.read()[-200:]}")
                try:
                    models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                    if models.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise OverBudget(f"mm deploy not ready in {time.time() - began:.0f} s")
                time.sleep(0.3)
            name = models.json()["data"][0]["id"]
            body = {"model": name, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
                    "temperature": 0}
            reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                               timeout=max(1, min(60, remaining())))
            reply.raise_for_status()
            return "ok", f"chat completion: {reply.json()['choices'][0]['finish_reason']}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    def fp16_trainable():
        process = mm("sft", "--model", str(base), *common, "--max_steps", "10", "--learning_rate", "1e-4",
                     "--sft_type", "full", "--dtype", "fp16", "--output_dir", str(work / "fp16"))
        checkpoint = checkpoint_of(process)
        loss = final_loss(checkpoint)
        if loss != loss:
            raise RuntimeError("loss is NaN")
        precision = re.search(r"mm sft: precision: (.*)", process.stderr)
        return "ok", f"full fine-tune, loss {loss:.3f}; {precision.group(1) if precision else ''}"

    def zero2():
        if importlib.util.find_spec("deepspeed") is None:
            return "skip", "deepspeed not installed (pip install deepspeed)"
        process = mm("sft", "--model", str(base), *common, "--max_steps", "10", "--learning_rate", "5e-3",
                     "--deepspeed", "default-zero2", "--output_dir", str(work / "zero2"), env={"NPROC_PER_NODE": "1"},
                     timeout=300)
        return "ok", f"one process, loss {final_loss(checkpoint_of(process)):.3f}"

    def merged_equals_adapter():
        from peft import PeftModel

        from swiftlite.models.loading import load_model, resolve_model

        if device != "cpu":
            torch.cuda.reset_peak_memory_stats()
        resolved = resolve_model(model_id_or_path=str(base))
        adapter = PeftModel.from_pretrained(load_model(base, resolved.family, torch.float32, device=device),
                                            str(state["lora"])).eval()
        merged = load_model(state["merged"], resolved.family, torch.float32, device=device)
        ids = torch.randint(10, 200, (2, 24), device=device)
        with torch.no_grad():
            difference = (adapter(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max().item()
        del adapter, merged
        result = "ok" if difference < 1e-3 else "FAIL"
        peak = f"torch peak {torch.cuda.max_memory_allocated() >> 20} MiB" if device != "cpu" else "CPU"
        return result, f"max abs logit difference {difference:.2e} (fp32; {peak})"

    def vllm_backend():
        # The CUDA path of --infer_backend vllm: the merged checkpoint as exported (it must load unchanged), then
        # the LoRA checkpoint through vLLM's LoRA. The share of GPU memory is small: the other checks' processes
        # may still hold theirs.
        if importlib.util.find_spec("vllm") is None:
            return "skip", "vllm not installed (pip install vllm)"
        flags = ["--infer_backend", "vllm", "--val_dataset", str(VAL), "--max_new_tokens", "4", "--temperature", "0",
                 "--gpu_memory_utilization", "0.3", "--max_model_len", "2048", "--enforce_eager", "true"]
        notes = []
        for what in ("merged", "lora"):
            process = mm("infer", "--ckpt_dir", str(state[what]), *flags, timeout=300)
            if process.returncode != 0:
                raise RuntimeError(f"{what}: {last_line(process)}")
            notes.append(f"{what}: {last_line(process)[-60:]}")
        return "ok", "; ".join(notes)

    for name, function in (("bf16 LoRA sft", lora_sft), ("export --merge_lora", export), ("infer", infer),
                           ("deploy", deploy), ("fp16 with trainable weights", fp16_trainable),
                           ("deepspeed default-zero2, 1 process", zero2),
                           ("merged == adapter logits", merged_equals_adapter), ("vLLM backend", vllm_backend)):
        needs = {"export --merge_lora": "lora", "infer": "merged", "deploy": "merged",
                 "merged == adapter logits": "merged", "vLLM backend": "merged"}.get(name)
        if needs and needs not in state:
            record(name, "skip", 0.0, "-", f"needs the {needs} checkpoint of an earlier check")
            continue
        run_check(name, function)

    widths = [max(len(row[i]) for row in ROWS + [("check", "result", "seconds", "peak MiB", "note")]) for i in range(5)]
    print()
    for row in [("check", "result", "seconds", "peak MiB", "note"), tuple("-" * w for w in widths), *ROWS]:
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |")
    peak = max((int(row[3]) for row in ROWS if row[3].isdigit()), default=0)
    print(f"\npeak GPU memory over all checks: {peak} MiB; total {time.time() - START:.0f} s")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if any(row[1] == "FAIL" for row in ROWS) else 0


START = time.time()
if __name__ == "__main__":
    sys.exit(main())
