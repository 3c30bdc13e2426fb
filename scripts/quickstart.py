"""The whole swiftlite loop on an offline demo, with the real `mm` commands, in a few minutes on a CPU.

1. build a small Qwen2-VL checkpoint (real architecture, random weights) in <output_dir>/qwen2-vl-demo
2. `mm sft` (LoRA) on examples/shapes/train.json: pictures of coloured shapes, "What colour is the shape?"
3. `mm export --merge_lora true`
4. `mm infer` on the held-out pictures of examples/shapes/val.json: each question, answer, expected answer,
   and the accuracy (the run fails below --min_accuracy)
5. `mm deploy`, one request through the openai SDK with a data-URL image, the answer, the server stopped

Usage: python scripts/quickstart.py [--epochs 8] [--output_dir output/demo] [--min_accuracy 0.9]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "shapes"


def say(step: str, text: str) -> None:
    print(f"\n=== {step}: {text}", flush=True)


def mm(*args: str) -> str:
    """Run an `mm` command, echoing it and its output; return the output."""
    command = [sys.executable, "-m", "swiftlite", *args]
    print("$ mm " + " ".join(args), flush=True)
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [line for line in result.stdout.splitlines() if "it/s]" not in line and "s/it]" not in line]
    print("\n".join("    " + line for line in lines[-12:]), flush=True)
    if result.returncode != 0:
        print(result.stdout[-4000:], file=sys.stderr)
        sys.exit(f"quickstart: `mm {args[0]}` failed with exit code {result.returncode}")
    return result.stdout


def build_checkpoint(directory: Path) -> None:
    from swiftlite.testing import build_tiny_checkpoint

    # Qwen2-VL architecture at toy size. An untied output head initialised wider than usual lets LoRA,
    # which never trains the head, reach confident answers in a few epochs.
    build_tiny_checkpoint("qwen2-vl", directory, hidden_size=64, num_layers=2, vision_depth=1, vision_dim=32,
                          tie_word_embeddings=False, initializer_range=0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"quickstart: mm deploy exited with code {server.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    sys.exit("quickstart: mm deploy did not become ready in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--output_dir", default=str(ROOT / "output" / "demo"))
    parser.add_argument("--min_accuracy", type=float, default=0.9)
    args = parser.parse_args()
    started = time.time()
    output = Path(args.output_dir).resolve()
    base = output / "qwen2-vl-demo"
    runs = output / "runs"
    shutil.rmtree(output, ignore_errors=True)

    say("1/5", f"building a small Qwen2-VL checkpoint in {base}")
    build_checkpoint(base)
    print(f"    files: {', '.join(sorted(p.name for p in base.iterdir()))}")

    say("2/5", f"LoRA fine-tuning on {DATA / 'train.json'} ({args.epochs} epochs)")
    log = mm("sft", "--model", str(base), "--dataset", str(DATA / "train.json"),
             "--val_dataset", str(DATA / "val.json"), "--num_train_epochs", str(args.epochs),
             "--batch_size", "8", "--learning_rate", "5e-3", "--lora_rank", "16", "--freeze_aligner", "false",
             "--gradient_checkpointing", "false", "--logging_steps", "10", "--eval_steps", "100000",
             "--save_steps", "100000", "--dataloader_num_workers", "0", "--output_dir", str(runs))
    found = re.findall(r"last_model_checkpoint: (\S+)", log)
    if not found:
        sys.exit("quickstart: mm sft did not report its last checkpoint")
    checkpoint = Path(found[-1])

    say("3/5", "merging the LoRA adapter into a standalone checkpoint")
    mm("export", "--ckpt_dir", str(checkpoint), "--merge_lora", "true")
    merged = Path(str(checkpoint) + "-merged")
    if not (merged / "config.json").is_file():
        sys.exit(f"quickstart: no merged checkpoint at {merged}")

    say("4/5", f"answering the held-out questions of {DATA / 'val.json'} with the merged model")
    log = mm("infer", "--ckpt_dir", str(merged), "--val_dataset", str(DATA / "val.json"), "--temperature", "0",
             "--max_new_tokens", "4")
    found = re.findall(r"(\S+\.jsonl)", log)
    if not found:
        sys.exit("quickstart: mm infer did not say where it wrote its results")
    rows = [json.loads(line) for line in Path(found[-1]).read_text().splitlines()]
    right = 0
    for row in rows:
        image = Path(row["images"][0]).name if row.get("images") else "-"
        ok = row["response"].strip().lower() == row["label"].strip().lower()
        right += ok
        print(f"    {image:28s} answer: {row['response'].strip():8s} expected: {row['label']:8s} {'ok' if ok else 'WRONG'}")
    accuracy = right / len(rows)
    print(f"    accuracy: {right}/{len(rows)} = {accuracy:.0%}")
    if accuracy < args.min_accuracy:
        sys.exit(f"quickstart: accuracy {accuracy:.0%} is below {args.min_accuracy:.0%}")

    say("5/5", "serving the merged model and asking it through the openai SDK")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "swiftlite", "deploy", "--ckpt_dir", str(merged),
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/v1/models", server)
        from openai import OpenAI

        from swiftlite.media import image_to_data_url

        client = OpenAI(api_key="EMPTY", base_url=f"http://127.0.0.1:{port}/v1")
        model = client.models.list().data[0].id
        picture = sorted((DATA / "images").glob("val_blue_*.png"))[0]
        response = client.chat.completions.create(
            model=model, temperature=0, max_tokens=4,
            # The same layout as the training rows ("Picture 1:<img>...</img>\nWhat colour..."), as OpenAI parts.
            messages=[{"role": "user", "content": [
                {"type": "text", "text": "Picture 1:"},
                {"type": "image_url", "image_url": {"url": image_to_data_url(picture)}},
                {"type": "text", "text": "\nWhat colour is the shape?"}]}])
        answer = response.choices[0].message.content
        print(f"    model: {model}\n    picture: {picture.name}\n    answer: {answer}")
        if answer.strip() != "blue":
            sys.exit(f"quickstart: the served model answered {answer!r}, expected 'blue'")
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"    server stopped (exit code {server.returncode})")

    print(f"\nDone in {time.time() - started:.0f} s. Files: base model {base}, run {checkpoint.parent}, "
          f"adapter {checkpoint}, merged model {merged}, answers {found[-1]}.")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
