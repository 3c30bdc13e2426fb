"""Write docs/models.md from the model registry (a test fails when the file and the registry disagree).

Usage: python scripts/gen_models_doc.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "models.md"


def render() -> str:
    from swiftlite.listing import families_table, models_table, templates_table

    return (
        "# Supported models\n\n"
        "Generated from the registry by `python scripts/gen_models_doc.py`; `mm list`, `mm list families` and\n"
        "`mm list templates` print the same tables. Any checkpoint of a listed architecture also works by\n"
        "directory or hub id (`--model DIR`), registered or not.\n\n"
        "A checkpoint's processor is read from every layout transformers saves: `processor_config.json` with the\n"
        "image processor or feature extractor nested in it (what transformers 5's `processor.save_pretrained`\n"
        "writes), or `preprocessor_config.json` (older saves); an image or audio checkpoint without one fails at\n"
        "load, naming the file.\n\n"
        "Video (the `video` column): the families marked yes take `<video>` with a `videos` column in dataset rows,\n"
        "`<video>` tags in `mm infer`'s chat and `video_url` parts in `mm deploy`, through the official processor's\n"
        "`videos=`. transformers' video processors need torchvision (`pip install torchvision`, the build matching\n"
        "your torch); without it a video is refused with a line saying so. Clips are decoded with PyAV: FPS frames a\n"
        "second (default 2), between FPS_MIN_FRAMES (4) and FPS_MAX_FRAMES (64), each frame scaled to at most\n"
        "VIDEO_MAX_PIXELS (100352) pixels: ms-swift's environment variables, with smaller defaults. A stream\n"
        "declaring a frame over 4096x2160 pixels, over 20000 frames, or more decode work than 20000 1080p frames\n"
        "is refused before decoding; the frames' tokens count in `--max_length`.\n\n"
        "## Families\n\n```text\n" + families_table() + "\n```\n\n"
        "## Model types\n\n```text\n" + models_table() + "\n```\n\n"
        "## Templates\n\n```text\n" + templates_table() + "\n```\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/models.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run python scripts/gen_models_doc.py", file=sys.stderr)
            sys.exit(1)
        return
    DOC.write_text(text)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
