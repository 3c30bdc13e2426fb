"""Every family with a tiny checkpoint goes through the whole loop with the real CLI:
a few LoRA DEFAULT steps (`mm sft`), `mm infer --ckpt_dir` on the adapter, `mm export --merge_lora true`,
and the merged model's logits equal base + adapter logits.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swiftlite.cli import main
from swiftlite.models import FAMILIES
from swiftlite.testing.tiny import discover_builders
from test_export import encoded_inputs, load, logits_of

ATOL = 1e-4


def write_dataset(directory: Path, modalities: tuple[str, ...]) -> Path:
    """Four single-turn rows in the `messages` format, with the family's media kind."""
    rows = []
    for index, (colour, rgb) in enumerate((("red", (220, 30, 30)), ("blue", (30, 30, 220))) * 2):
        row = {"messages": [{"role": "user", "content": "what colour is it?"}, {"role": "assistant", "content": colour}]}
        if "image" in modalities:
            path = directory / f"image{index}.png"
            Image.new("RGB", (56, 56), rgb).save(path)
            row["messages"][0]["content"] = "<image>what colour is it?"
            row["images"] = [str(path)]
        elif "audio" in modalities:
            path = directory / f"clip{index}.wav"
            with wave.open(str(path), "wb") as clip:
                clip.setnchannels(1)
                clip.setsampwidth(2)
                clip.setframerate(16000)
                tone = np.sin(np.arange(8000) * (0.05 + 0.05 * index)) * 8000
                clip.writeframes(tone.astype("<i2").tobytes())
            row["messages"][0]["content"] = "<audio>what is this sound?"
            row["audios"] = [str(path)]
        rows.append(row)
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def family_of(builder_name: str):
    return next(f for f in FAMILIES.values() if f.name == builder_name)


@pytest.mark.slow
@pytest.mark.parametrize("family_name", sorted(discover_builders()))
def test_sft_infer_export_loop(family_name, tmp_path, capsys):
    from swiftlite.testing import build_tiny_checkpoint

    family = family_of(family_name)
    base = build_tiny_checkpoint(family_name, tmp_path / "base")
    data = write_dataset(tmp_path, family.modalities)

    code = main(["sft", "--model", str(base), "--dataset", str(data), "--max_steps", "2", "--batch_size", "2",
                 "--gradient_accumulation_steps", "1", "--learning_rate", "5e-2", "--lora_target_modules", "DEFAULT",
                 "--dataset_test_ratio", "0", "--save_steps", "2", "--logging_steps", "1",
                 "--gradient_checkpointing", "false", "--dataloader_num_workers", "0",
                 "--output_dir", str(tmp_path / "output")])
    assert code == 0, capsys.readouterr().err
    checkpoint = next((tmp_path / "output").glob("*/v*/checkpoint-2"))
    assert (checkpoint / "adapter_config.json").is_file()
    adapter = json.loads((checkpoint / "adapter_config.json").read_text())
    targets = adapter["target_modules"]
    targets = targets if isinstance(targets, list) else [targets]
    assert not any(t.startswith(family.vision_tower) for t in targets if family.vision_tower)  # DEFAULT: LLM only

    code = main(["infer", "--ckpt_dir", str(checkpoint), "--val_dataset", str(data), "--max_new_tokens", "4",
                 "--temperature", "0"])
    assert code == 0, capsys.readouterr().err
    results = list((checkpoint / "infer_result").glob("*.jsonl"))
    assert len(results) == 1
    rows = [json.loads(line) for line in results[0].read_text().splitlines()]
    assert len(rows) == 4 and all("response" in row and row["label"] for row in rows)

    code = main(["export", "--ckpt_dir", str(checkpoint), "--merge_lora", "true"])
    assert code == 0, capsys.readouterr().err
    merged = Path(str(checkpoint) + "-merged")
    assert json.loads((merged / "sft_args.json").read_text())["sft_type"] == "full"

    batch = encoded_inputs(base, family_name, None)
    with_adapter = logits_of(load(base, checkpoint), batch)
    assert (with_adapter - logits_of(load(base), batch)).abs().max() > 1e-4  # training changed the model
    assert (logits_of(load(merged), batch) - with_adapter).abs().max() <= ATOL
