"""Small datasets the training tests build: rows of a coloured image and its colour's name as the answer."""

from __future__ import annotations

import json
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def solid_colour_dataset(folder: Path, count: int, growing: bool = True) -> Path:
    """folder/train.jsonl: `count` rows asking the colour of a solid image (red, green, blue in turn), each image
    beside the file. With `growing` the i-th image is (28 + i) x 28, so rows differ in their number of patches."""
    from PIL import Image

    rows = []
    for index in range(count):
        colour = list(COLOURS)[index % 3]
        Image.new("RGB", (28 + index if growing else 28, 28), COLOURS[colour]).save(folder / f"image{index}.png")
        rows.append({"messages": [{"role": "user", "content": "<image>what colour is it"},
                                  {"role": "assistant", "content": colour}], "images": [f"image{index}.png"]})
    return write_jsonl(folder / "train.jsonl", rows)
