"""Generate the toy dataset shipped in examples/shapes/: small images of coloured shapes, each asked its colour.

Usage: python scripts/make_shapes_dataset.py [--out examples/shapes] [--per_class 8] [--val_per_class 2]

Rows use the `conversations` format of ms-swift's Qwen-VL best practice (seed 003), images as
`Picture 1:<img>images/NAME.png</img>` tags with paths relative to the dataset file. Deterministic.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 205, 40)}
SHAPES = ("circle", "square", "triangle")
# Colour is what a tiny random-weight vision tower lets the demo model learn in a minute on a CPU; shapes
# stay in the pictures (and the file names) so the set can grow harder questions later.
QUESTION = "What colour is the shape?"


def draw(shape: str, colour: tuple, rng: random.Random, size: int = 56) -> Image.Image:
    background = tuple(rng.randint(225, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    extent = rng.randint(size // 2, size - 8)
    left, top = rng.randint(2, size - extent - 2), rng.randint(2, size - extent - 2)
    box = (left, top, left + extent, top + extent)
    jitter = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in colour)
    if shape == "circle":
        pen.ellipse(box, fill=jitter)
    elif shape == "square":
        pen.rectangle(box, fill=jitter)
    else:
        pen.polygon([(left + extent // 2, top), (left, top + extent), (left + extent, top + extent)], fill=jitter)
    return image


def rows_for(image_name: str, colour: str) -> list[dict]:
    tag = f"Picture 1:<img>images/{image_name}</img>\n"
    return [{"conversations": [{"from": "user", "value": tag + QUESTION}, {"from": "assistant", "value": colour}]}]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="examples/shapes")
    parser.add_argument("--per_class", type=int, default=8)
    parser.add_argument("--val_per_class", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    splits: dict[str, list] = {"train": [], "val": []}
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            for index in range(args.per_class + args.val_per_class):
                split = "train" if index < args.per_class else "val"
                name = f"{split}_{colour}_{shape}_{index}.png"
                draw(shape, rgb, rng).save(out / "images" / name, optimize=True)
                splits[split] += rows_for(name, colour)
    for split, rows in splits.items():
        (out / f"{split}.json").write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {len(rows)} rows to {out / f'{split}.json'}")


if __name__ == "__main__":
    main()
