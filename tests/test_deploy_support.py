"""Helpers shared by the deploy and client tests (no tests here): LoRA adapters made with peft on the tiny
checkpoints, a base-only copy of a checkpoint, a local HTTP server for image URLs, and running `build_app`
(what `mm deploy` serves) on a free port in a background thread."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import threading
from pathlib import Path


def make_lora(base_dir: Path, out_dir: Path, seed: int) -> Path:
    """A LoRA adapter on the language model's attention, with lora_B perturbed so its outputs differ from the base."""
    import torch
    from peft import LoraConfig, get_peft_model

    from swiftlite.models.loading import load_model, resolve_model

    resolved = resolve_model(None, str(base_dir))
    model = load_model(resolved.model_dir, resolved.family, torch.float32, device="cpu")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r"^model\.language_model.*\.(q_proj|v_proj)$")
    with torch.random.fork_rng():  # lora_A's random init from `seed` too, not from whatever ran before
        torch.manual_seed(seed)
        model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # peft initialises B to zero: an untouched adapter would change nothing
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.save_pretrained(out_dir)
    return out_dir


def make_base_only(model_dir: Path, out_dir: Path) -> Path:
    """A copy of a checkpoint without any chat template: what a base (pretrained-only) model ships."""
    shutil.copytree(model_dir, out_dir)
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    (out_dir / "chat_template.json").unlink(missing_ok=True)
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config, indent=2))
    return out_dir


@contextlib.contextmanager
def static_http_server(directory: Path):
    """Serve `directory` over HTTP on 127.0.0.1 (for image_url tests); yields the base URL."""
    with http_server(functools.partial(_QuietHandler, directory=str(directory))) as url:
        yield url


@contextlib.contextmanager
def http_server(handler):
    """Serve `handler` (an http.server request handler) on a free port of 127.0.0.1, a thread per connection;
    yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def running_server(**options):
    """`build_app(**options)` served on a free port; yields the BackgroundServer (url, base_url, app)."""
    from swiftlite.deploy import build_app
    from swiftlite.server.background import BackgroundServer

    options.setdefault("max_new_tokens", 8)
    app = build_app(**options)
    server = BackgroundServer(app, timeout_graceful_shutdown=5).start()
    server.app = app
    try:
        yield server
    finally:
        server.stop()


def wav_bytes(seconds: float = 1.0, frequency: float = 440.0) -> bytes:
    """A 16 kHz mono sine wave of `seconds` as WAV file bytes."""
    import io
    import math
    import struct
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        samples = (int(8000 * math.sin(2 * math.pi * frequency * i / 16000)) for i in range(int(16000 * seconds)))
        wav.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return buffer.getvalue()


def metric(server, name: str) -> float:
    """The value of one unlabelled Prometheus sample from GET /metrics."""
    import httpx

    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"metric {name} not found")
