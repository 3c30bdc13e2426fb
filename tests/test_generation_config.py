"""engine/generate.py uses the request's settings only: a checkpoint's generation_config (repetition_penalty,
no_repeat_ngram_size, min_new_tokens) does not leak into `generate` on top of them, and a default request,
whose settings are read from that file, gets the repetition penalty once, not twice."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from swiftlite.conversation import conversation_from_query
from swiftlite.engine.generate import SamplingParams, generate
from swiftlite.models.checkpoint import load_for_inference


@pytest.fixture(scope="module")
def plain_and_penalised(llava_dir, tmp_path_factory):
    penalised_dir = tmp_path_factory.mktemp("penalised") / "llava"
    shutil.copytree(llava_dir, penalised_dir)
    path = penalised_dir / "generation_config.json"
    settings = json.loads(path.read_text())
    settings.update(repetition_penalty=2.0, no_repeat_ngram_size=1, min_new_tokens=8)
    path.write_text(json.dumps(settings))
    plain = load_for_inference(model_id_or_path=str(llava_dir), dtype="fp32")
    penalised = load_for_inference(model_id_or_path=str(penalised_dir), dtype="fp32")
    assert penalised.model.generation_config.repetition_penalty == 2.0
    return plain, penalised


def test_request_settings_are_not_mixed_with_the_checkpoints(plain_and_penalised):
    plain, penalised = plain_and_penalised
    row = plain.template.encode(conversation_from_query("hello world"))
    params = dict(max_new_tokens=6, temperature=0, repetition_penalty=1.0, logprobs=True)
    expected = generate(plain.model, plain.template, [row], [SamplingParams(**params)])[0]
    got = generate(penalised.model, penalised.template, [row], [SamplingParams(**params)])[0]
    assert got.token_ids == expected.token_ids
    assert [step["logprob"] for step in got.logprobs] == pytest.approx([s["logprob"] for s in expected.logprobs])
    assert penalised.model.generation_config.repetition_penalty == 2.0  # restored after the call


def test_default_request_gets_the_checkpoints_penalty_once(plain_and_penalised):
    _, penalised = plain_and_penalised
    model, template = penalised.model, penalised.template
    row = template.encode(conversation_from_query("hello world"))
    params = SamplingParams.from_generation_config(model.generation_config, max_new_tokens=1, logprobs=True)
    assert params.repetition_penalty == 2.0 and not params.sampling
    result = generate(model, template, [row], [params])[0]

    with torch.inference_mode():
        logits = model(**template.collate([row], padding_side="left")).logits[0, -1].float()
    seen = torch.unique(torch.tensor(row["input_ids"]))
    once = logits.clone()
    once[seen] = torch.where(logits[seen] < 0, logits[seen] * 2.0, logits[seen] / 2.0)
    expected = torch.log_softmax(once, dim=-1)
    assert result.token_ids == [int(torch.argmax(expected))]
    assert result.logprobs[0]["logprob"] == pytest.approx(float(expected[result.token_ids[0]]), abs=1e-5)
