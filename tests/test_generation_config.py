"""engine/generate.py uses the request's settings only: a checkpoint's generation_config (repetition_penalty,
no_repeat_ngram_size, min_new_tokens) does not leak into `generate` on top of them, and a default request,
whose settings are read from that file, gets the repetition penalty once, not twice. The same holds for the
step engine behind `mm deploy`, on its batched path and on its per-row path (which calls `generate`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from swiftlite.conversation import conversation_from_query
from swiftlite.engine.generate import SamplingParams, generate
from swiftlite.models.checkpoint import load_for_inference


def penalised_copy(model_dir, target):
    """`model_dir` copied to `target`, its generation_config asking for a repetition penalty of 2, no repeated
    token and at least 8 new tokens."""
    shutil.copytree(model_dir, target)
    path = target / "generation_config.json"
    settings = json.loads(path.read_text())
    settings.update(repetition_penalty=2.0, no_repeat_ngram_size=1, min_new_tokens=8)
    path.write_text(json.dumps(settings))
    return target


@pytest.fixture(scope="module")
def plain_and_penalised(llava_dir, tmp_path_factory):
    penalised_dir = penalised_copy(llava_dir, tmp_path_factory.mktemp("penalised") / "llava")
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


@pytest.mark.parametrize("family", ["llava1_5", "gemma3"])  # batched decode; one row per forward (generate)
def test_step_engine_uses_the_request_settings_only(llava_dir, tmp_path, family):
    import httpx

    from swiftlite.testing import build_tiny_checkpoint
    from test_deploy_support import running_server

    plain_dir = llava_dir if family == "llava1_5" else build_tiny_checkpoint(family, tmp_path / family)
    penalised_dir = penalised_copy(plain_dir, tmp_path / "penalised")

    def answers(model_dir) -> list[list[tuple[str, float]]]:
        """Greedy answers with logprobs: one asking for repetition_penalty 1.0, one with the defaults."""
        with running_server(model=str(model_dir), engine="step", max_new_tokens=6) as server:
            assert (server.app.state.server.engine.per_row is None) == (family == "llava1_5")
            got = []
            for extra in ({"repetition_penalty": 1.0}, {}):
                body = dict(model=server.app.state.server.models[0].name, max_tokens=6, temperature=0,
                            logprobs=True, messages=[{"role": "user", "content": "hello hello world"}], **extra)
                response = httpx.post(server.base_url + "/chat/completions", json=body, timeout=300)
                assert response.status_code == 200, response.text
                got.append([(step["token"], step["logprob"])
                            for step in response.json()["choices"][0]["logprobs"]["content"]])
            return got

    (plain, _), (asked_off, default) = answers(plain_dir), answers(penalised_dir)
    assert [token for token, _ in asked_off] == [token for token, _ in plain]
    assert [lp for _, lp in asked_off] == pytest.approx([lp for _, lp in plain], abs=1e-4)
    assert default != asked_off  # the checkpoint's penalty is the default: it is read, and it matters
