"""Per-family costs of the Qwen group on their tiny checkpoints (CPU): build, encode, train step, generate.

    python scripts/bench_qwen_families.py [--repeats 5]

Encode is the full Template.encode of one training sample (render, tokenize, media processing, expansion):
the data-pipeline cost that does not shrink with model size. Train step and generate use the tiny models,
so they measure framework overhead, not real-model speed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from swiftlite.conversation import Conversation
from swiftlite.engine.generate import SamplingParams, generate
from swiftlite.models import FAMILIES
from swiftlite.models.loading import load_model, load_tokenizer
from swiftlite.templates import get_template
from swiftlite.testing import build_tiny_checkpoint

IMAGE = Image.new("RGB", (448, 336), (200, 40, 40))
AUDIO = (np.random.default_rng(0).standard_normal(16000 * 5) * 0.1).astype(np.float32)  # 5 s


def sample(family: str) -> Conversation:
    media = {"qwen2_5-vl": ("<image>", {"images": [IMAGE]}), "qwen3-vl": ("<image>", {"images": [IMAGE]}),
             "qwen2-audio": ("<audio>", {"audios": [AUDIO]})}
    tag, kwargs = media.get(family, ("", {}))
    return Conversation([{"role": "user", "content": f"{tag}what is in this picture?"},
                         {"role": "assistant", "content": "a red square on a white background"}], **kwargs)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{'family':<12} {'build ms':>9} {'encode ms':>10} {'tokens':>7} {'train step ms':>14} {'generate 8 ms':>14}")
    with tempfile.TemporaryDirectory() as root:
        for family in ("qwen2_5-vl", "qwen3-vl", "qwen2-audio", "qwen2_5", "qwen3"):
            start = time.perf_counter()
            directory = build_tiny_checkpoint(family, Path(root) / family)
            build_ms = (time.perf_counter() - start) * 1000
            template = get_template(FAMILIES[family].template, load_tokenizer(directory))
            model = load_model(directory, FAMILIES[family], torch.float32, device="cpu")
            conversation = sample(family)
            row = template.encode(conversation)
            encode_ms = timed(lambda: template.encode(conversation), args.repeats)
            batch = template.collate([row, row])

            def train_step():
                model.train()
                model(**batch).loss.backward()
                model.zero_grad()
                model.eval()

            prompt = template.encode(Conversation(conversation.messages[:1], conversation.images, conversation.audios))
            params = [SamplingParams(max_new_tokens=8, temperature=0)]
            train_ms = timed(train_step, args.repeats)
            generate_ms = timed(lambda: generate(model, template, [prompt], params), args.repeats)
            print(f"{family:<12} {build_ms:>9.0f} {encode_ms:>10.1f} {len(row['input_ids']):>7} {train_ms:>14.1f} "
                  f"{generate_ms:>14.1f}")


if __name__ == "__main__":
    main()
