"""Per-step cost of a grammar mask (engine/logits.py RowLogits.shape) at a real vocabulary size.

    python scripts/bench_grammar.py [--vocab 151936] [--threads 1] [--steps 200]

Builds the tiny Qwen3 tokenizer padded to --vocab entries, compiles a JSON schema with llguidance and times the
mask computation plus its application to one row of logits (what RowSampler adds per constrained row and step).
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from swiftlite.engine.generate import SamplingParams
    from swiftlite.engine.logits import RowLogits, json_schema_grammar
    from swiftlite.testing import build_tiny_checkpoint

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        tokenizer = AutoTokenizer.from_pretrained(build_tiny_checkpoint("qwen3", f"{root}/qwen3"))
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "n": {"type": "integer"}}}
    params = SamplingParams(grammar=json_schema_grammar(schema), stop_token_ids=[tokenizer.eos_token_id])
    shaper = RowLogits(params, tokenizer, args.vocab)
    logits = torch.randn(args.vocab)
    shaper.shape(logits, [])
    started = time.perf_counter()
    for _ in range(args.steps):
        shaper.shape(logits, [])
    per_step = (time.perf_counter() - started) / args.steps * 1000
    print(f"vocab {args.vocab}, {args.threads} thread(s): {per_step:.2f} ms per row and step")


if __name__ == "__main__":
    main()
