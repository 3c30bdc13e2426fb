"""The client examples in examples/ run unchanged against a live server, configured by environment variables
(MM_BASE_URL, MM_MODEL, MM_IMAGE, MM_IMAGE2), with image URLs and with local image files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_deploy_support import make_base_only, running_server, static_http_server, wav_bytes

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.slow  # each example is a fresh Python process importing openai/httpx: seconds apiece


@pytest.fixture(scope="module")
def chat_server(qwen2_vl_dir):
    # The examples' image host is on loopback: allowed by name, as --allowed_media_domains does.
    with running_server(model=str(qwen2_vl_dir), max_new_tokens=4, allowed_media_domains=["127.0.0.1"]) as running:
        yield running


@pytest.fixture(scope="module")
def base_server(qwen2_vl_dir, tmp_path_factory):
    base_dir = make_base_only(qwen2_vl_dir, tmp_path_factory.mktemp("examples-base") / "qwen2-vl")
    with running_server(model=str(base_dir), served_model_name="qwen2-vl-base", max_new_tokens=4,
                        allowed_media_domains=["127.0.0.1"]) as running:
        yield running


@pytest.fixture(scope="module")
def image_host(shape_images):
    with static_http_server(shape_images["red"].parent) as url:
        yield url


def run_example(command: list[str], server, image: str, image2: str, **extra_env) -> str:
    env = dict(os.environ, MM_BASE_URL=server.base_url, MM_IMAGE=image, MM_IMAGE2=image2, **extra_env)
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=EXAMPLES.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("example", ["client_openai.py", "client_swiftlite.py"])
@pytest.mark.parametrize("images", ["urls", "local files"])
def test_python_examples_on_a_chat_model(example, images, chat_server, image_host, shape_images):
    if images == "urls":
        image, image2 = f"{image_host}/red.png", f"{image_host}/blue.png"
    else:
        image, image2 = str(shape_images["red"]), str(shape_images["blue"])
    output = run_example([sys.executable, str(EXAMPLES / example)], chat_server, image, image2)
    assert "model_type: qwen2-vl" in output and output.count("response:") >= 4


@pytest.mark.parametrize("example", ["client_openai.py", "client_swiftlite.py"])
def test_python_examples_on_a_base_model(example, base_server, image_host):
    output = run_example([sys.executable, str(EXAMPLES / example)], base_server, f"{image_host}/red.png",
                         f"{image_host}/blue.png")
    assert "model_type: qwen2-vl-base" in output and output.count("response:") == 2


@pytest.mark.parametrize("images", ["urls", "local files"])
def test_curl_example(images, chat_server, image_host, shape_images):
    image = f"{image_host}/red.png" if images == "urls" else str(shape_images["red"])
    output = run_example(["bash", str(EXAMPLES / "curl.sh")], chat_server, image, image)
    assert output.count('"object":"chat.completion"') == 3 and '"object":"text_completion"' in output
    assert "data: [DONE]" in output and '"choices":[]' in output


@pytest.mark.parametrize("audio", ["url", "local file"])
def test_openai_example_on_an_audio_model(audio, tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    root = tmp_path_factory.getbasetemp() / "examples-audio"
    if not (root / "qwen2-audio").is_dir():
        root.mkdir(exist_ok=True)
        (root / "sound.wav").write_bytes(wav_bytes())
        build_tiny_checkpoint("qwen2-audio", root / "qwen2-audio")
    with running_server(model=str(root / "qwen2-audio"), max_new_tokens=4,
                        allowed_media_domains=["127.0.0.1"]) as server, \
            static_http_server(root) as host:
        sound = f"{host}/sound.wav" if audio == "url" else str(root / "sound.wav")
        output = run_example([sys.executable, str(EXAMPLES / "client_openai.py")], server, "", "", MM_AUDIO=sound)
    assert "model_type: qwen2-audio" in output and output.count("response:") == 2
