"""`mm deploy` as a user runs it: flag mistakes are one line, and the real process starts, serves the seeds'
calls and shuts down cleanly on SIGTERM (exit 0, in-flight requests finished or cancelled within a bound)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from test_deploy_support import make_lora


def run_mm(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "swiftlite", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,words", [
    (["--lora_modules", "style"], "expected NAME=DIR"),
    (["--lora_modules", "style=/nonexistent"], "no adapter_config.json"),
    (["--limit_mm_per_prompt", "video=2"], "unknown kind 'video'"),
    (["--limit_mm_per_prompt", "image=many"], "expected image=N"),
    (["--max_batch_size", "0"], "--max_batch_size 0"),
    (["--port", "70000"], "--port 70000"),
    (["--api_key", " "], "--api_key is empty"),
    (["--ssl_keyfile", "key.pem"], "go together"),
    (["--allowed_local_media_path", "/nonexistent/dir"], "no such directory"),
    (["--dtype", "int3"], "--dtype int3"),
])
def test_flag_mistakes_are_one_line(qwen2_vl_dir, args, words):
    result = run_mm("deploy", "--model", str(qwen2_vl_dir), *args)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mm deploy: error:") and words in lines[0], result.stderr


def deploy_defaults() -> dict:
    import inspect

    from swiftlite.deploy import deploy

    return {name: parameter.default for name, parameter in inspect.signature(deploy).parameters.items()}


@pytest.mark.parametrize("group,changes,message", [
    ("engine", {"engine": "fast"}, "--engine fast: expected step or static"),
    ("engine", {"engine": "static", "max_num_batched_tokens": 64},
     "--max_num_batched_tokens needs --engine step (the static engine admits by rows only)"),
    ("limits", {"max_model_len": 1}, "--max_model_len 1: expected at least 2 tokens"),
    ("media", {"media_fetch_timeout": 0}, "--media_fetch_timeout 0: expected a positive number"),
    ("media", {"allowed_media_domains": ["https://x.org"]},
     "--allowed_media_domains 'https://x.org': expected a host name (no scheme, no path), such as media.example.com"),
    ("server", {"shutdown_timeout": -1}, "--shutdown_timeout -1: expected a number >= 0"),
    ("server", {"cors_origins": ["ftp://x.org"]},
     "--cors_origins 'ftp://x.org': expected an origin such as https://app.example.com, or '*'"),
    ("model", {"dtype": "int3"}, "--dtype int3: expected auto, bf16, fp16 or fp32"),
])
def test_each_flag_group_checks_its_own_flags(group, changes, message):
    from swiftlite.errors import UserError
    from swiftlite.server.flags import DeployFlags

    DeployFlags.from_dict(deploy_defaults()).check()  # the defaults pass
    flags = DeployFlags.from_dict({**deploy_defaults(), **changes})
    with pytest.raises(UserError) as caught:
        getattr(flags, group).check()
    assert str(caught.value) == message
    with pytest.raises(UserError, match="^" + re.escape(message) + "$"):
        flags.check()


def test_flag_groups_hold_every_deploy_flag_once_and_are_frozen():
    import dataclasses

    from swiftlite.server.flags import DeployFlags

    flags = DeployFlags.from_dict(deploy_defaults())
    names = [field.name for group in dataclasses.fields(flags)
             for field in dataclasses.fields(getattr(flags, group.name))]
    assert sorted(names) == sorted(deploy_defaults())
    assert flags.server.port == 8000 and flags.engine.engine == "step" and flags.media.media_fetch is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        flags.server.port = 9000


def test_build_app_refuses_an_unknown_keyword_before_loading():
    from swiftlite.deploy import build_app

    with pytest.raises(TypeError, match="unknown \\['modle'\\]"):
        build_app(modle="/nonexistent")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_deploy(*args, port: int) -> tuple[subprocess.Popen, float]:
    """Start `mm deploy` and wait for its first answered /v1/models; returns (process, seconds it took)."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "swiftlite", "deploy", "--port", str(port), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = started + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mm deploy exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return process, time.monotonic() - started
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("mm deploy did not answer /v1/models in time")


@pytest.mark.slow
def test_deploy_serves_a_lora_checkpoint_and_stops_cleanly_on_sigterm(qwen2_vl_dir, tmp_path):
    # An `mm sft` LoRA checkpoint: the adapter plus sft_args.json naming its base model.
    ckpt = make_lora(qwen2_vl_dir, tmp_path / "checkpoint-10", seed=5)
    (ckpt / "sft_args.json").write_text(json.dumps({"model_id_or_path": str(qwen2_vl_dir), "template_type": "qwen2-vl"}))
    extra = make_lora(qwen2_vl_dir, tmp_path / "extra", seed=6)
    port = free_port()
    process, startup = start_deploy("--ckpt_dir", str(ckpt), "--lora_modules", f"extra={extra}",
                                    "--max_new_tokens", "4000", "--shutdown_timeout", "2", port=port)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        models = httpx.get(base + "/models").json()["data"]
        assert [m["id"] for m in models] == ["qwen2-vl", "extra"] and models[0]["root"] == str(ckpt)
        body = {"model": "qwen2-vl", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3,
                "temperature": 0}
        tuned = httpx.post(base + "/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]["content"]
        extra_answer = httpx.post(base + "/chat/completions", json={**body, "model": "extra"}, timeout=60).json()
        assert extra_answer["choices"][0]["message"]["content"] != tuned  # two adapters, two answers

        # SIGTERM while a long stream is in flight: after --shutdown_timeout it ends with finish_reason "abort"
        # and [DONE], and the process exits 0.
        with httpx.stream("POST", base + "/chat/completions", json={**body, "max_tokens": 3990, "stream": True},
                          timeout=60) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            next(lines)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][len("data: "):])["choices"][0]["finish_reason"] == "abort"
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - signalled < 15
        with pytest.raises(httpx.ConnectError):
            httpx.get(base + "/models")
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read()
    assert "Traceback" not in output, output
    assert startup < 120


def test_busy_port_is_one_line(qwen2_vl_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_mm("deploy", "--model", str(qwen2_vl_dir), "--port", str(port))
    assert result.returncode == 1
    assert f"--port {port}: cannot listen there" in result.stderr and "Traceback" not in result.stderr
