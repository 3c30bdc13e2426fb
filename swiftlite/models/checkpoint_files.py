"""The non-weight files that make a checkpoint directory load on its own: one list for `mm export` and for the
full fine-tune checkpoints of `mm sft`, so both can load every tokenizer the base model's can (a tiktoken
vocabulary, a remote-code tokenizer class, a sentencepiece model)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

# Shell patterns, matched against file names.
PROCESSOR_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*", "merges.txt", "*.tiktoken",
                   "spiece.model", "tokenization_*.py", "preprocessor_config.json", "processor_config.json",
                   "video_preprocessor_config.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")


def is_processor_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in PROCESSOR_FILES)


def processor_files(directory: Path) -> list[Path]:
    """The tokenizer / processor / generation-config files in `directory`, sorted by name."""
    return [path for path in sorted(Path(directory).iterdir()) if path.is_file() and is_processor_file(path.name)]
