"""swiftlite.models.checkpoint_files: atomic publish (an interrupted write leaves the previous directory whole and
no half directory under the final name), the sft_args.json round trip, and the typed flag groups of `mm sft` that
sft_args.json records."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from swiftlite.errors import UserError
from swiftlite.models.checkpoint_files import (SFT_ARGS_FILE, describe_checkpoint, publish, read_sft_args,
                                               stage_beside, write_sft_args)


def contents(directory: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


def old_checkpoint(tmp_path: Path) -> Path:
    target = tmp_path / "out" / "checkpoint-merged"
    target.mkdir(parents=True)
    (target / "model.safetensors").write_text("old weights")
    (target / "config.json").write_text("{}")
    return target


def test_publish_replaces_the_target_only_with_a_complete_directory(tmp_path):
    target = old_checkpoint(tmp_path)
    staged = stage_beside(target)
    assert staged.parent == target.parent and staged.name == f".{target.name}.tmp-{os.getpid()}"
    (staged / "model.safetensors").write_text("new weights")
    assert contents(target) == {"config.json": "{}", "model.safetensors": "old weights"}  # untouched while staging
    publish(staged, target)
    assert contents(target) == {"model.safetensors": "new weights"}
    assert sorted(path.name for path in target.parent.iterdir()) == [target.name]  # no .tmp-/.old- left


def test_a_writer_killed_mid_write_leaves_the_previous_directory_intact(tmp_path):
    target = old_checkpoint(tmp_path)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from swiftlite.models.checkpoint_files import stage_beside
        staged = stage_beside(Path({str(target)!r}))
        with open(staged / "model.safetensors", "w") as handle:
            handle.write("half of the new wei")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=os.getcwd()), timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert contents(target) == {"config.json": "{}", "model.safetensors": "old weights"}
    leftovers = [path for path in target.parent.iterdir() if path != target]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(f".{target.name}.tmp-")
    assert (leftovers[0] / "model.safetensors").read_text() == "half of the new wei"

    notes = []
    staged = stage_beside(target, notes.append)  # the next writer removes the dead one's temp dir
    assert notes == [f"removing {leftovers[0]}, left by an interrupted export"] and not leftovers[0].exists()
    (staged / "model.safetensors").write_text("new weights")
    publish(staged, target)
    assert contents(target) == {"model.safetensors": "new weights"}


def test_a_live_writers_temp_dir_is_refused(tmp_path):
    target = old_checkpoint(tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (target.parent / f".{target.name}.tmp-{writer.pid}").mkdir()
        with pytest.raises(UserError, match=f"another export \\(pid {writer.pid}\\) is writing {target}"):
            stage_beside(target)
    finally:
        writer.kill()
        writer.wait()
    assert contents(target) == {"config.json": "{}", "model.safetensors": "old weights"}


def test_sft_args_round_trip_and_a_damaged_file_is_one_line(tmp_path):
    args = {"model_type": "llava1_5", "system": "réponds brièvement", "dataset": ["/data/train.jsonl"]}
    write_sft_args(tmp_path, args)
    assert read_sft_args(tmp_path) == args
    (tmp_path / SFT_ARGS_FILE).write_text("[1, 2]")
    with pytest.raises(UserError, match=f"{tmp_path / SFT_ARGS_FILE}: .*expected a JSON object"):
        read_sft_args(tmp_path)


def test_describe_checkpoint_copies_the_base_tokenizer_files_for_full_weights_only(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    for name in ("tokenizer.json", "chat_template.jinja", "model.safetensors", "config.json", "LICENSE"):
        (base / name).write_text(name)
    lora, full = tmp_path / "lora", tmp_path / "full"
    lora.mkdir()
    full.mkdir()
    (full / "tokenizer.json").write_text("the checkpoint's own")
    describe_checkpoint(lora, {"sft_type": "lora"})
    describe_checkpoint(full, {"sft_type": "full"}, base)
    assert sorted(contents(lora)) == [SFT_ARGS_FILE]
    assert contents(full) == {"chat_template.jinja": "chat_template.jinja", "tokenizer.json": "the checkpoint's own",
                              SFT_ARGS_FILE: '{\n  "sft_type": "full"\n}\n'}


# ---- the typed flag groups of `mm sft` -------------------------------------------------------------------
def test_sft_flags_hold_every_flag_once_in_the_order_of_the_command():
    from swiftlite.sft import sft
    from swiftlite.training.flags import SftFlags

    defaults = {name: parameter.default for name, parameter in inspect.signature(sft).parameters.items()}
    flags = SftFlags.from_dict(defaults)
    assert list(flags.as_dict()) == list(defaults) and flags.as_dict() == defaults
    assert (flags.tuner.sft_type, flags.optim.learning_rate, flags.output.output_dir) == ("lora", None, "output")
    with pytest.raises(TypeError, match="unknown \\['no_such_flag'\\]"):
        SftFlags.from_dict(dict(defaults, no_such_flag=1))


def test_sft_flags_are_frozen_and_replace_routes_each_flag_to_its_group():
    import dataclasses

    from swiftlite.sft import sft
    from swiftlite.training.flags import SftFlags

    flags = SftFlags.from_dict({name: p.default for name, p in inspect.signature(sft).parameters.items()})
    with pytest.raises(dataclasses.FrozenInstanceError):
        flags.optim.learning_rate = 1.0
    changed = flags.replace(learning_rate=2e-4, max_pixels=1024)
    assert (changed.optim.learning_rate, changed.model.max_pixels) == (2e-4, 1024)
    assert (flags.optim.learning_rate, flags.model.max_pixels) == (None, None)  # the original is unchanged
    assert changed.data is flags.data  # untouched groups are shared, not copied
    with pytest.raises(TypeError, match="no flag \\['lr'\\]"):
        flags.replace(lr=1.0)


def test_check_flags_decides_defaults_and_names_the_flag(monkeypatch):
    from swiftlite.sft import check_flags, sft
    from swiftlite.training.flags import SftFlags

    defaults = {name: p.default for name, p in inspect.signature(sft).parameters.items()}
    monkeypatch.setenv("MAX_PIXELS", "50176")
    flags = check_flags(SftFlags.from_dict(dict(defaults, model="m", dataset=["d.jsonl"], sft_type="full",
                                                resume_from_checkpoint="false")))
    assert (flags.optim.learning_rate, flags.model.max_pixels, flags.output.resume_from_checkpoint) == (
        1e-5, 50176, None)
    with pytest.raises(UserError, match="^--eval_batch_size 0: must be at least 1$"):
        check_flags(SftFlags.from_dict(dict(defaults, model="m", dataset=["d.jsonl"], eval_batch_size=0)))
    assert json.dumps(flags.as_dict())  # what sft_args.json records is plain JSON
