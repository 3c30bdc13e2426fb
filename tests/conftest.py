"""Shared fixtures: tiny real-architecture checkpoints, built once per test session.

Each is built with swiftlite.testing (real config class, real special tokens and chat template, real
image processor) and saved with save_pretrained, then loaded by the code under test exactly as a user's
checkpoint directory would be.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FAMILIES = ("qwen2-vl", "llava1_5")

# The vLLM lane's tests run in their own venv (scripts/test_vllm.sh, which .ci/run calls); the main lane's python
# has no vLLM to run them with.
if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_vllm*.py"]


@pytest.fixture
def one_thread():
    """Torch on one thread for a test (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models train
    fastest so on a shared machine, and a run in this process then computes as a subprocess started with
    OMP_NUM_THREADS=1 does."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    from swiftlite.testing import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_checkpoint(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def qwen2_vl_dir(tiny_checkpoints) -> Path:
    return tiny_checkpoints["qwen2-vl"]


@pytest.fixture(scope="session")
def llava_dir(tiny_checkpoints) -> Path:
    return tiny_checkpoints["llava1_5"]


@pytest.fixture(params=FAMILIES)
def tiny_family(request, tiny_checkpoints):
    """(family name, checkpoint dir) for each family: a test using it runs once per family."""
    return request.param, tiny_checkpoints[request.param]


@pytest.fixture(scope="session")
def shape_images(tmp_path_factory) -> dict[str, Path]:
    """A few small PNGs of coloured shapes."""
    from PIL import Image, ImageDraw

    root = tmp_path_factory.mktemp("images")
    paths = {}
    for name, colour in (("red", (220, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 220))):
        image = Image.new("RGB", (56, 56), (255, 255, 255))
        ImageDraw.Draw(image).ellipse((8, 8, 48, 48), fill=colour)
        paths[name] = root / f"{name}.png"
        image.save(paths[name])
    return paths
