"""Checkpoint I/O, in one place for `mm sft` and `mm export`: which files a checkpoint holds besides its weights,
the sft_args.json that makes it describe itself, and publishing a directory all at once.

Atomic publish: a checkpoint is written whole into a staging directory beside its target and then renamed into
place (one rename on one filesystem), so a run or an export killed mid-write never leaves a half-written
directory under the final name, and `--overwrite` drops the old directory only once the new one is complete.
`mm export` stages in `.<name>.tmp-<pid>` beside the target (a killed export's temp dir is removed by the next
one); `mm sft` lets the Trainer write into `<run>/.staging/checkpoint-<step>` and publishes from there.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
from pathlib import Path

from swiftlite.errors import UserError

SFT_ARGS_FILE = "sft_args.json"  # every flag of the run, plus what reloading needs (swiftlite.models.checkpoint)
STAGING_DIR = ".staging"  # inside a run directory: where the Trainer writes a checkpoint before it is published

# The non-weight files that make a checkpoint directory load on its own, so that a full fine-tune checkpoint and a
# merged export load every tokenizer the base model's can (a tiktoken vocabulary, a remote-code tokenizer class,
# a sentencepiece model). Shell patterns, matched against file names.
PROCESSOR_FILES = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*", "merges.txt", "*.tiktoken",
                   "spiece.model", "tokenization_*.py", "preprocessor_config.json", "processor_config.json",
                   "video_preprocessor_config.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".ot",
                   ".index.json")


# ---- which files ------------------------------------------------------------------------------------------
def is_processor_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in PROCESSOR_FILES)


def processor_files(directory: Path) -> list[Path]:
    """The tokenizer / processor / generation-config files in `directory`, sorted by name."""
    return [path for path in sorted(Path(directory).iterdir()) if path.is_file() and is_processor_file(path.name)]


def non_weight_files(directory: Path) -> list[Path]:
    """Every file of a model directory but its weights, config.json and sft_args.json (tokenizer, processors, chat
    template, generation config, remote code, licence): what a merged export carries over from its base."""
    return [path for path in sorted(Path(directory).iterdir())
            if path.is_file() and not path.name.startswith(".") and path.name not in ("config.json", SFT_ARGS_FILE)
            and not path.name.endswith(WEIGHT_SUFFIXES)]


# ---- sft_args.json ----------------------------------------------------------------------------------------
def read_sft_args(directory: Path) -> dict:
    """The checkpoint's sft_args.json, which must hold a JSON object (a damaged file is one line naming it)."""
    from swiftlite.models.integrity import read_json_object

    return read_json_object(Path(directory) / SFT_ARGS_FILE)


def write_sft_args(directory: Path, args: dict) -> None:
    (Path(directory) / SFT_ARGS_FILE).write_text(json.dumps(args, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")


def describe_checkpoint(directory: Path, sft_args: dict, base_model_dir: Path | None = None) -> None:
    """Make a checkpoint load on its own: its sft_args.json and, for full weights (`base_model_dir` given), the base
    model's tokenizer and processor files (those the checkpoint does not already hold)."""
    write_sft_args(directory, sft_args)
    if base_model_dir is not None:
        for source in processor_files(base_model_dir):
            if not (Path(directory) / source.name).exists():
                shutil.copy2(source, Path(directory) / source.name)


# ---- atomic publish ---------------------------------------------------------------------------------------
def stage_beside(target: Path, note=print) -> Path:
    """Create the temp dir `.<name>.tmp-<pid>` beside `target` (same filesystem, so publishing is one rename),
    after removing those of killed writers; refuse while another live process writes this target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:tmp|old)-(\d+)")
    for path in target.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and _process_alive(pid):
            raise UserError(f"another export (pid {pid}) is writing {target} (temp dir {path}); wait for it to "
                            "finish, or delete that directory if it is not running")
        note(f"removing {path}, left by an interrupted export")
        shutil.rmtree(path, ignore_errors=True)
    staged = target.parent / f".{target.name}.tmp-{os.getpid()}"
    staged.mkdir()
    return staged


def publish(staged: Path, target: Path) -> None:
    """Flush `staged` to disk and rename it to `target`. An existing target is replaced only now that the new
    directory is complete: it is renamed aside first and removed after (a crash in between leaves it aside,
    never half of each)."""
    for path in [*staged.iterdir(), staged]:  # on disk before the rename publishes them
        _fsync(path)
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.rename(target, old)
        os.rename(staged, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staged, target)
    _fsync(target.parent)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has finished
    except ProcessLookupError:
        return False
    except (OSError, IndexError):  # not ours to signal, or no /proc: assume it runs
        return True


def _fsync(path: Path) -> None:
    """Flush a file or a directory entry to disk (a crash must not publish empty weight files)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
