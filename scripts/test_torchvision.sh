#!/usr/bin/env bash
# The torchvision lane: the GPU user's install (torch + torchvision; on these machines a CUDA build from local
# wheels that runs on the CPU). In its own venv, over the system python's packages (transformers, peft, ...):
# the fast (torchvision) image processors against the PIL ones, AutoProcessor with the video processors, video
# (tests/lane_video.py: sft -> infer -> deploy on a generated clip, decode caps and bounds), and the fidelity and
# sft -> infer -> deploy tests through the torchvision backends.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TORCHVISION_VENV:-/work/venvs/tv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torchvision" >/dev/null 2>&1; then
    python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
fi
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The sft -> infer -> deploy layout tests and the sft -> infer -> export loop run for three families here.
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/lane_torchvision.py tests/lane_video.py tests/test_template_fidelity.py \
    tests/test_processor_layouts.py tests/test_families_e2e.py \
    -k "not (sft_infer_deploy or sft_infer_export) or qwen2-vl or llava1_5 or minicpm_v" "$@"
