"""--packing true: a padding-free batch gives the loss of the padded batch, on a tiny checkpoint of every family
it is offered for (1-D RoPE like llava1_5, M-RoPE like qwen2-vl: image tokens get temporal/height/width
positions), in fp32 with the same rows; and an `mm sft` run with packing logs the same losses as one without
(LoRA dropout off: its random draws depend on the layout). Families it is refused for get one clear line."""

from __future__ import annotations

import json
import re

import pytest
import torch

from swiftlite.conversation import conversation_from_query
from swiftlite.training.packing import PACKING_FAMILIES, pack_batch


def training_rows(template, shape_images):
    from swiftlite.conversation import Conversation

    conversations = [
        (f"<img>{shape_images['red']}</img>what colour is it?", "red, a round red shape"),
        ("hello world, say something long enough to differ in length", "hi"),
        (f"<img>{shape_images['green']}</img><img>{shape_images['blue']}</img>which is blue?", "the second one"),
    ] if shape_images else [  # text-only families
        ("what colour is it?", "red, a round red shape"),
        ("hello world, say something long enough to differ in length", "hi"),
        ("which is blue, the first or the second?", "the second one"),
    ]
    rows = []
    for query, response in conversations:
        conversation = conversation_from_query(query)
        conversation = Conversation(messages=[*conversation.messages, {"role": "assistant", "content": response}],
                                    images=conversation.images)
        rows.append(template.encode(conversation))
    return rows


@pytest.fixture(scope="module")
def family_checkpoints(tiny_checkpoints, tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("packing")
    return lambda family: tiny_checkpoints.get(family) or build_tiny_checkpoint(family, root / family)


@pytest.mark.parametrize("family", PACKING_FAMILIES)
def test_packed_loss_equals_padded_loss(family_checkpoints, shape_images, family):
    from swiftlite.models.checkpoint import load_for_inference

    loaded = load_for_inference(model_id_or_path=str(family_checkpoints(family)), dtype="fp32")
    model, template = loaded.model, loaded.template
    text_only = family in ("qwen2_5", "qwen3")
    rows = training_rows(template, None if text_only else shape_images)
    lengths = [len(row["input_ids"]) for row in rows]
    assert len(set(lengths)) == len(lengths)  # padding happens
    batch = template.collate(rows, padding_side="right")
    packed = pack_batch(model, dict(batch))
    assert "attention_mask" not in packed and packed["input_ids"].shape == (1, sum(lengths))
    if family in ("qwen2-vl", "qwen2_5-vl", "qwen3-vl", "glm4_1v"):  # M-RoPE
        assert packed["position_ids"].shape == (4, 1, sum(lengths))
        # image tokens take 2-D positions: height and width axes differ from the text axis inside an image
        assert (packed["position_ids"][2] != packed["position_ids"][0]).any()
    with torch.no_grad():
        padded_loss = model(**batch).loss
        packed_loss = model(**packed).loss
        # the packed rows really are kept apart: without position ids they would attend to each other
        unseparated = dict(packed)
        unseparated.pop("position_ids")
        mixed_loss = model(**unseparated).loss
    assert float(packed_loss) == pytest.approx(float(padded_loss), abs=1e-5)
    assert abs(float(mixed_loss) - float(padded_loss)) > 1e-4


def test_sft_with_packing_logs_the_same_losses(capsys, tmp_path, qwen2_vl_dir, shape_images):
    from swiftlite.cli import main

    data = tmp_path / "train.jsonl"
    rows = []
    for index in range(8):
        colour = ("red", "green", "blue")[index % 3]
        images = [str(shape_images[colour])] * (1 + index % 2)
        query = "<image>" * len(images) + "what colour?" + " please" * index
        rows.append({"query": query, "response": f"{colour} " * (1 + index % 3), "images": images})
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def losses(packing: str) -> list[float]:
        code = main(["sft", "--model", str(qwen2_vl_dir), "--dataset", str(data), "--max_steps", "3",
                     "--batch_size", "4", "--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0",
                     "--logging_steps", "1", "--dataset_test_ratio", "0", "--learning_rate", "1e-2",
                     "--lora_dropout", "0", "--packing", packing, "--output_dir", str(tmp_path / packing), "--dtype", "fp32"])
        err = capsys.readouterr().err
        assert code == 0, err[-2000:]
        run_dir = re.search(r"mm sft: output: (\S+)", err).group(1)
        logs = [json.loads(line) for line in open(f"{run_dir}/logging.jsonl")]
        return [log["loss"] for log in logs if "loss" in log]

    unpacked, packed = losses("false"), losses("true")
    assert len(packed) == 3 and len(unpacked) == 3
    assert packed == pytest.approx(unpacked, abs=1e-4)
    assert packed[-1] != pytest.approx(packed[0], abs=1e-3)  # it trained


def test_packing_is_refused_for_other_families(capsys, tmp_path, tiny_checkpoints):
    from swiftlite.cli import main
    from swiftlite.testing import build_tiny_checkpoint

    gemma = build_tiny_checkpoint("gemma3", tmp_path / "gemma3")
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"query": "hi", "response": "hello"}) + "\n")
    code = main(["sft", "--model", str(gemma), "--dataset", str(data), "--packing", "true",
                 "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0
    assert err.strip().splitlines()[-1].startswith(
        "mm sft: error: --packing true: not supported for the gemma3 family yet (supported: llava1_5, ")
