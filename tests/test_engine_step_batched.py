"""The step engine's batched decoding (engine/step_batch.py): every running row's next token from one forward,
rows joining and leaving between steps, and each row's answer that of the same request alone on the static
engine (engine.generate). Families whose cache cannot be batched keep the per-row path and still answer."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import threading

import httpx
import pytest

from test_deploy_support import running_server


def image(path) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()}}


def ask(server, content, max_tokens: int, model=None) -> list[tuple]:
    """Greedy, with logprobs: [(token, logprob, top-2 logprobs)] of the answer."""
    body = dict(model=model or server.app.state.server.models[0].name, max_tokens=max_tokens, temperature=0,
                logprobs=True, top_logprobs=2, messages=[{"role": "user", "content": content}])
    response = httpx.post(server.base_url + "/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return [(step["token"], step["logprob"], [top["logprob"] for top in step["top_logprobs"]])
            for step in response.json()["choices"][0]["logprobs"]["content"]]


def assert_same(answers, expected):
    """Same tokens; logprobs equal up to float32 rounding (a batched matmul sums in another order than one row's)."""
    for answer, reference in zip(answers, expected, strict=True):
        assert [step[0] for step in answer] == [step[0] for step in reference]
        assert [step[1] for step in answer] == pytest.approx([step[1] for step in reference], abs=1e-4)
        assert [top for step in answer for top in step[2]] == pytest.approx(
            [top for step in reference for top in step[2]], abs=1e-4)


class DecodeWidths:
    """Records the batch size of every decode forward (one new token per row) of the engine's model."""

    def __init__(self, engine):
        self.widths: list[int] = []
        self.hook = engine.inner.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[-1] == 1:
            self.widths.append(ids.shape[0])


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("qwen2_5", tmp_path_factory.mktemp("text") / "qwen2_5")


@pytest.mark.parametrize("family", ["qwen2-vl", "llava1_5", "qwen2_5"])
def test_concurrent_rows_decode_in_one_forward_and_answer_as_the_static_engine_alone(
        family, tiny_checkpoints, text_dir, shape_images):
    # Rows of different prompt lengths and max_tokens (they leave the batch at different steps), images beside
    # text rows (M-RoPE positions for Qwen2-VL: each row's own rope delta), all in flight together.
    model_dir = text_dir if family == "qwen2_5" else tiny_checkpoints[family]
    with_image = family != "qwen2_5"
    requests = [("hello", 3),
                ([image(shape_images["red"]), {"type": "text", "text": "what is it"}] if with_image else "what is it", 9),
                ("which shape and colour do you see in the picture, and why", 16),
                ([image(shape_images["blue"]), {"type": "text", "text": "colour"}] if with_image else "colour?", 12)]
    with running_server(engine="static", model=str(model_dir), batch_wait_ms=0) as server:
        alone = [ask(server, content, max_tokens) for content, max_tokens in requests]
    with running_server(engine="step", model=str(model_dir), max_batch_size=8, batch_wait_ms=300) as server:
        engine = server.app.state.server.engine
        assert engine.per_row is None  # this family takes the batched path
        widths = DecodeWidths(engine)
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            busy = list(pool.map(lambda request: ask(server, *request), requests))
        widths.hook.remove()
    assert_same(busy, alone)
    assert max(widths.widths) >= 2  # decode steps ran rows together
    # One forward per step for all rows: far fewer forwards than the rows' tokens summed.
    assert len(widths.widths) < sum(len(answer) for answer in busy) - len(requests)


class Stream:
    """A greedy streaming request on its own thread; it stops reading (the client leaves) after `leave_after`
    chunks when that is set."""

    def __init__(self, server, content: str, max_tokens: int, leave_after: int | None = None):
        self.started, self.done = threading.Event(), threading.Event()
        self.tokens: list[tuple] = []
        body = dict(model=server.app.state.server.models[0].name, max_tokens=max_tokens, stream=True, temperature=0,
                    logprobs=True, top_logprobs=2, messages=[{"role": "user", "content": content}])
        self.thread = threading.Thread(target=self._read, args=(server.base_url, body, leave_after), daemon=True)
        self.thread.start()

    def _read(self, base_url, body, leave_after):
        with httpx.stream("POST", base_url + "/chat/completions", json=body, timeout=300) as response:
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk["choices"]:
                    for step in (choice.get("logprobs") or {}).get("content") or []:
                        self.tokens.append((step["token"], step["logprob"],
                                            [top["logprob"] for top in step["top_logprobs"]]))
                    self.started.set()
                if leave_after is not None and len(self.tokens) >= leave_after:
                    break  # closing the response: the server sees the client leave
        self.done.set()


def wait_until(condition, seconds: float = 60.0) -> bool:
    stop = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if condition():
            return True
        stop.wait(0.01)
    return False


def test_a_row_joining_and_a_row_cancelled_mid_decode_leave_the_other_rows_answers_unchanged(qwen2_vl_dir,
                                                                                              tmp_path):
    from swiftlite.testing.tiny import never_stopping_copy

    model_dir = never_stopping_copy(qwen2_vl_dir, tmp_path / "qwen2-vl")
    with running_server(engine="step", model=str(model_dir), max_batch_size=8, batch_wait_ms=0) as server:
        engine = server.app.state.server.engine
        long = Stream(server, "tell a long story", 150)
        assert long.started.wait(120)
        leaving = Stream(server, "a red circle", 400, leave_after=3)
        assert wait_until(lambda: len(engine.batch.rows) == 2)
        joining = ask(server, "which shape and colour", 6)  # joins a batch that is decoding, leaves before it ends
        assert leaving.done.wait(120)
        # The cancelled row leaves the decode batch at once, while the long row goes on.
        assert wait_until(lambda: len(engine.batch.rows) == 1) and not long.done.is_set()
        long.thread.join(300)
        assert len(leaving.tokens) < 400
        alone_long = ask(server, "tell a long story", 150)
        alone_joining = ask(server, "which shape and colour", 6)
    assert len(long.tokens) == 150
    assert_same([long.tokens, joining], [alone_long, alone_joining])


@pytest.mark.parametrize("family,reason", [("gemma3", "sliding"), ("mllama", "cross-attention")])
def test_families_whose_cache_cannot_be_batched_keep_the_per_row_path(family, reason, tmp_path, shape_images):
    from swiftlite.testing import build_tiny_checkpoint

    model_dir = build_tiny_checkpoint(family, tmp_path / family)
    requests = [([image(shape_images["red"]), {"type": "text", "text": "what is it"}], 6), ("hello there", 4)]
    with running_server(engine="static", model=str(model_dir), batch_wait_ms=0) as server:
        alone = [ask(server, content, max_tokens) for content, max_tokens in requests]
    with running_server(engine="step", model=str(model_dir), max_batch_size=8, batch_wait_ms=300) as server:
        engine = server.app.state.server.engine
        assert reason in engine.per_row
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            busy = list(pool.map(lambda request: ask(server, *request), requests))
    assert_same(busy, alone)


def test_an_allocation_failure_in_a_decode_step_fails_the_row_that_joined_last_and_the_others_go_on(qwen2_vl_dir,
                                                                                                    tmp_path):
    # The decode step of two rows really allocates 4 TiB in the model's last decoder layer (after the first layer
    # appended that step's keys and values to the shared cache): the row that joined last gets the 503, the long
    # row goes on, and its answer is still that of the row alone (the half-appended step was cut off the cache).
    import torch

    from swiftlite.testing.tiny import never_stopping_copy

    model_dir = never_stopping_copy(qwen2_vl_dir, tmp_path / "qwen2-vl")
    with running_server(engine="step", model=str(model_dir), max_batch_size=8, batch_wait_ms=0) as server:
        engine = server.app.state.server.engine
        last_layer = [module for name, module in engine.inner.named_modules()
                      if name.endswith("layers.1") and "visual" not in name][-1]
        fired = []

        def allocate(module, args):
            hidden = args[0]
            if hidden.shape[0] == 2 and hidden.shape[1] == 1 and not fired:
                fired.append(1)
                torch.empty(2**40, dtype=torch.float32)  # raises: DefaultCPUAllocator: can't allocate memory

        hook = last_layer.register_forward_pre_hook(allocate)
        try:
            long = Stream(server, "tell a long story", 60)
            assert long.started.wait(120)
            body = dict(model=server.app.state.server.models[0].name, max_tokens=8,
                        messages=[{"role": "user", "content": "hello"}])
            failed = httpx.post(server.base_url + "/chat/completions", json=body, timeout=300)
            assert failed.status_code == 503, failed.text
            assert failed.json()["error"]["code"] == "out_of_memory"
            long.thread.join(300)
        finally:
            hook.remove()
        assert fired and len(long.tokens) == 60
        assert_same([long.tokens], [ask(server, "tell a long story", 60)])
        assert len(ask(server, "hello", 8)) == 8  # the server goes on
