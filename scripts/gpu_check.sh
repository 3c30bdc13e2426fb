#!/usr/bin/env bash
# The CUDA paths of swiftlite on one GPU (at most 8 minutes, tiny checkpoints), as one table: bf16 LoRA sft,
# export, infer, deploy; fp16 with trainable weights; --deepspeed default-zero2 with one process; merged ==
# adapter logits; the vLLM backend when installed; peak GPU memory. See docs/benchmarks.md.
# Usage: bash scripts/gpu_check.sh   (PYTHON=... to choose the interpreter)
# On a machine without CUDA it says so and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is false): nothing checked"
    exit 0
fi
exec timeout 480 "$PYTHON" scripts/gpu_check.py
