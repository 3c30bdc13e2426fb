"""Per-family costs of the LLaVA-NeXT / OneVision / InternVL3 / Gemma 3 / SmolVLM group on tiny checkpoints (CPU).

    python scripts/bench_vlm_families.py [--repeats 5]

For each family: build time of the tiny checkpoint; Template.encode of one training sample with one
448x336 image (render, tokenize, image processing, tiling, placeholder expansion: the data-pipeline cost,
which does not shrink with model size) and the image tokens it yields at the tiny tile size; one
forward+backward of a collated batch (an image row and a text row); greedy generation of 8 tokens for that
batch through swiftlite.engine.generate. Model timings measure framework overhead, not real-model speed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from swiftlite.conversation import Conversation
from swiftlite.engine.generate import SamplingParams, generate
from swiftlite.models import FAMILIES
from swiftlite.models.loading import load_model, load_tokenizer
from swiftlite.templates import get_template
from swiftlite.testing import build_tiny_checkpoint

IMAGE = Image.new("RGB", (448, 336), (200, 40, 40))
FAMILY_NAMES = ("llava_next", "llava_onevision", "internvl3", "gemma3", "smolvlm")
EXPANDED_TOKEN = {"gemma3": "<image_soft_token>"}


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    sample = Conversation([{"role": "user", "content": "<image>what colour is it?"},
                           {"role": "assistant", "content": "a red square"}], [IMAGE])
    text_row = Conversation([{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "yes"}])
    print(f"{'family':16} {'build s':>8} {'encode ms':>10} {'img tokens':>10} {'fwd+bwd ms':>11} {'generate ms':>12}")
    with tempfile.TemporaryDirectory() as root:
        for name in FAMILY_NAMES:
            start = time.perf_counter()
            directory = build_tiny_checkpoint(name, Path(root) / name)
            build_s = time.perf_counter() - start
            family = FAMILIES[name]
            template = get_template(family.template, load_tokenizer(directory))
            encode_ms = median_ms(lambda: template.encode(sample), args.repeats)
            row = template.encode(sample)
            expanded = EXPANDED_TOKEN.get(name, template.meta.image_token)
            image_tokens = row["input_ids"].count(template.token_id(expanded))
            model = load_model(directory, family, torch.float32, device="cpu")
            batch = template.collate([row, template.encode(text_row)])
            model.train()

            def step():
                model.zero_grad()
                model(**batch).loss.backward()

            train_ms = median_ms(step, args.repeats)
            model.eval()
            prompts = [template.encode(Conversation(sample.messages[:1], [IMAGE])),
                       template.encode(Conversation(text_row.messages[:1]))]
            params = lambda: [SamplingParams(max_new_tokens=8, temperature=0) for _ in prompts]  # noqa: E731
            generate_ms = median_ms(lambda: generate(model, template, prompts, params()), args.repeats)
            print(f"{name:16} {build_s:8.2f} {encode_ms:10.1f} {image_tokens:10d} {train_ms:11.1f} {generate_ms:12.1f}")


if __name__ == "__main__":
    main()
