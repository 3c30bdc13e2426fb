"""The step engine (`mm deploy --engine step`): rows join and leave between decode steps, admission
by a token budget, an out-of-memory error fails only its own request, and one adapter is switched on per row
instead of peft's mixed-batch path. Every test runs the tiny real checkpoints through a real server."""

from __future__ import annotations

import concurrent.futures
import json
import threading

import httpx
import pytest

from test_deploy_support import make_lora, running_server
from test_engine_step_batched import assert_same


def chat(server, content: str, max_tokens: int, **extra) -> httpx.Response:
    body = dict(model=server.app.state.server.models[0].name, max_tokens=max_tokens,
                messages=[{"role": "user", "content": content}], **extra)
    return httpx.post(server.base_url + "/chat/completions", json=body, timeout=300)


class LongStream:
    """A streaming request read on its own thread; `started` is set at its first text, `done` at its end."""

    def __init__(self, server, content: str, max_tokens: int, **extra):
        self.started, self.done = threading.Event(), threading.Event()
        self.chunks = 0
        self.completion_tokens = None  # from the stream's usage chunk
        body = dict(model=server.app.state.server.models[0].name, max_tokens=max_tokens, stream=True,
                    stream_options={"include_usage": True}, messages=[{"role": "user", "content": content}], **extra)
        self.thread = threading.Thread(target=self._read, args=(server.base_url, body), daemon=True)
        self.thread.start()

    def _read(self, base_url, body):
        with httpx.stream("POST", base_url + "/chat/completions", json=body, timeout=300) as response:
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk["choices"]:
                    self.chunks += 1
                    self.started.set()
                if chunk.get("usage"):
                    self.completion_tokens = chunk["usage"]["completion_tokens"]
        self.done.set()


@pytest.fixture(scope="module")
def never_stopping_dir(qwen2_vl_dir, tmp_path_factory):
    from swiftlite.testing.tiny import never_stopping_copy

    # Long rows must run to their max_tokens (the tiny model would otherwise stop by itself).
    return never_stopping_copy(qwen2_vl_dir, tmp_path_factory.mktemp("never_stopping") / "qwen2-vl")


@pytest.fixture(scope="module")
def step_server(never_stopping_dir):
    with running_server(engine="step", model=str(never_stopping_dir), max_batch_size=8, max_new_tokens=8,
                        batch_wait_ms=0) as running:
        yield running


def test_a_request_arriving_mid_batch_finishes_before_the_long_row(step_server):
    # The tiny random model never stops early: the long row runs its 400 steps. In a static batch the short
    # request would wait for all of them; here it joins at the next step and leaves after its 4 tokens.
    long = LongStream(step_server, "tell a long story", max_tokens=400, temperature=0)
    assert long.started.wait(120)
    short = chat(step_server, "hi", max_tokens=4, temperature=0)
    assert short.status_code == 200
    assert short.json()["usage"]["completion_tokens"] == 4
    assert not long.done.is_set()  # the long row is still running: the short one did not wait for it
    long.thread.join(300)
    assert long.completion_tokens == 400  # the long row ran to its end


def test_a_row_in_a_busy_engine_equals_the_row_alone(step_server):
    # Seeded sampling with logprobs: every row has its own generator and its own positions, and the batch's
    # padding is masked out, so neither the other rows nor the moment a row joins change its tokens or logprobs.
    requests = [("a red circle", 12, 1), ("which shape and colour do you see", 30, 2), ("hello", 5, 3),
                ("a green square and a blue triangle", 20, 4)]

    def answer(request):
        content, max_tokens, seed = request
        response = chat(step_server, content, max_tokens, temperature=0.9, seed=seed, logprobs=True,
                        top_logprobs=2)
        assert response.status_code == 200, response.text
        return [(step["token"], step["logprob"], [top["logprob"] for top in step["top_logprobs"]])
                for step in response.json()["choices"][0]["logprobs"]["content"]]

    alone = [answer(request) for request in requests]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        busy = list(pool.map(answer, requests))
    assert_same(busy, alone)
    assert [len(tokens) for tokens in alone] == [12, 30, 5, 20]


def test_over_the_token_budget_waits_and_over_the_queue_gets_429(qwen2_vl_dir):
    # Budget 300 tokens: the long request (prompt + 250) fills it, the next waits (queue of one), the third is a 429.
    with running_server(engine="step", model=str(qwen2_vl_dir), max_batch_size=8, max_queue=1, max_num_batched_tokens=300,
                        batch_wait_ms=0) as server:
        long = LongStream(server, "tell a long story", max_tokens=250, temperature=0)
        assert long.started.wait(120)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(chat, server, "hi", 100, temperature=0)
            while server.app.state.server.engine.queue_length == 0:  # it is queued, not running
                assert not waiting.done()
                threading.Event().wait(0.01)
            refused = chat(server, "hello", 4)
            assert refused.status_code == 429, refused.text
            assert "--max_queue 1" in refused.json()["error"]["message"]
            answered = waiting.result(300)
        assert answered.status_code == 200
        assert long.done.is_set()  # the waiting request ran only once the long one had left the budget
        assert chat(server, "hi", 4).status_code == 200


def test_an_allocation_failure_fails_only_its_request_with_503(never_stopping_dir):
    # CPU memory has no limit to hit in a test, so one row really allocates more than any machine has
    # (4 TiB, at its prefill: the prompt of 'POISON'); the allocator's error is what an OOM looks like on CPU.
    import torch

    with running_server(engine="step", model=str(never_stopping_dir), max_batch_size=8, batch_wait_ms=0) as server:
        engine = server.app.state.server.engine

        def allocate(module, args, kwargs):
            ids = kwargs.get("input_ids")
            if ids is not None and ids.shape[-1] > 1 and "POISON" in engine.template.tokenizer.decode(ids[0]):
                torch.empty(2**40, dtype=torch.float32)  # raises: DefaultCPUAllocator: can't allocate memory

        hook = engine.inner.register_forward_pre_hook(allocate, with_kwargs=True)
        try:
            long = LongStream(server, "tell a long story", max_tokens=120, temperature=0)
            assert long.started.wait(120)
            failed = chat(server, "POISON POISON POISON POISON", 8)
            assert failed.status_code == 503, failed.text
            assert failed.json()["error"]["code"] == "out_of_memory"
            assert "out of memory for this request" in failed.json()["error"]["message"]
            long.thread.join(300)
            assert long.completion_tokens == 120  # the running row went on to its end
            after = chat(server, "hello", 4)
            assert after.status_code == 200 and after.json()["usage"]["completion_tokens"] == 4
        finally:
            hook.remove()


def test_one_adapter_switched_on_gives_the_logprobs_of_the_mixed_adapter_path(qwen2_vl_dir, tmp_path):
    # The step engine switches each row's adapter on (set_adapter, or the adapter layers off for the base);
    # the static engine sends the batch through peft's adapter_names. Same tokens, same logprobs, both ways,
    # with base and adapter rows in flight together.
    lora = make_lora(qwen2_vl_dir, tmp_path / "lora", seed=5)
    requests = [(None, "which shape and colour"), ("tuned", "which shape and colour"), ("tuned", "a red circle"),
                (None, "a blue triangle and a green square")]

    def answers(engine):
        with running_server(model=str(qwen2_vl_dir), lora_modules=[f"tuned={lora}"], max_batch_size=8,
                            batch_wait_ms=200, engine=engine) as server:
            base = server.app.state.server.models[0].name

            def one(request):
                model, content = request
                body = dict(model=model or base, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3,
                            messages=[{"role": "user", "content": content}])
                response = httpx.post(server.base_url + "/chat/completions", json=body, timeout=300)
                assert response.status_code == 200, response.text
                return response.json()["choices"][0]["logprobs"]["content"]

            with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
                return list(pool.map(one, requests))

    step, static = answers("step"), answers("static")
    for step_answer, static_answer in zip(step, static):
        assert [s["token"] for s in step_answer] == [s["token"] for s in static_answer]
        for s, t in zip(step_answer, static_answer):
            assert s["logprob"] == pytest.approx(t["logprob"], abs=1e-4)
            assert [x["logprob"] for x in s["top_logprobs"]] == pytest.approx(
                [x["logprob"] for x in t["top_logprobs"]], abs=1e-4)
    assert [s["logprob"] for s in step[0]] != [s["logprob"] for s in step[1]]  # the adapter does change the answer


def test_a_failure_after_the_stream_started_is_an_error_event_and_the_server_goes_on(qwen2_vl_dir):
    """Fault injection into the real model: its fourth forward pass (the third decode step) raises, as a device
    error would. The stream has sent text already, so it ends with an error event (no [DONE]); the next
    request is answered."""
    with running_server(engine="step", model=str(qwen2_vl_dir), max_new_tokens=20, batch_wait_ms=0) as server:
        engine = server.app.state.server.engine
        forwards = []

        def explode(module, args):
            forwards.append(1)
            if len(forwards) == 4:
                raise RuntimeError("device lost")

        hook = engine.inner.register_forward_pre_hook(explode)
        try:
            body = dict(model=server.app.state.server.models[0].name, max_tokens=20, stream=True, temperature=0,
                        messages=[{"role": "user", "content": "hello"}])
            with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=120) as response:
                assert response.status_code == 200
                lines = [line for line in response.iter_lines() if line]
        finally:
            hook.remove()
        assert any('"content"' in line for line in lines[:-1])  # text was streamed before the failure
        error = json.loads(lines[-1][len("data: "):])["error"]
        assert "device lost" in error["message"] and error["type"] == "server_error"
        assert chat(server, "hi", 4).status_code == 200


@pytest.mark.parametrize("args,words", [
    (["--engine", "fast"], "--engine fast: expected step or static"),
    (["--engine", "step", "--max_num_batched_tokens", "0"], "--max_num_batched_tokens 0"),
    (["--engine", "static", "--max_num_batched_tokens", "4096"], "needs --engine step"),
])
def test_engine_flag_mistakes_are_one_line(qwen2_vl_dir, args, words):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "swiftlite", "deploy", "--model", str(qwen2_vl_dir), *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mm deploy: error:") and words in lines[0], result.stderr


def test_a_lone_lora_checkpoint_is_merged_at_load_with_the_adapters_answers(qwen2_vl_dir, tmp_path):
    # --ckpt_dir of a LoRA checkpoint and no --lora_modules: nothing else needs the base weights, so the adapter is
    # merged in memory (a merged checkpoint's speed); its answers are those of peft's adapter layers.
    ckpt = make_lora(qwen2_vl_dir, tmp_path / "checkpoint-10", seed=7)
    (ckpt / "sft_args.json").write_text(json.dumps({"model_id_or_path": str(qwen2_vl_dir), "template_type": "qwen2-vl"}))

    def answer(merge_lora):
        with running_server(ckpt_dir=str(ckpt), merge_lora=merge_lora, batch_wait_ms=0) as server:
            assert hasattr(server.app.state.server.engine.model, "peft_config") is not merge_lora
            response = chat(server, "which shape and colour", 12, temperature=0, logprobs=True, top_logprobs=2)
            assert response.status_code == 200, response.text
            return response.json()["choices"][0]["logprobs"]["content"]

    merged, layered = answer(True), answer(False)
    assert [step["token"] for step in merged] == [step["token"] for step in layered]
    assert [step["logprob"] for step in merged] == pytest.approx([step["logprob"] for step in layered], abs=1e-4)
