#!/usr/bin/env bash
# The offline demo: installs swiftlite, then runs the whole loop (build a small Qwen2-VL checkpoint,
# mm sft, mm export --merge_lora, mm infer on held-out images, mm deploy + one openai SDK request).
# Usage: bash scripts/quickstart.sh [--epochs N] [--output_dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet "torch==2.13.0"  # the CPU build here; GPU users install torch first
fi
"$PYTHON" -m pip install --quiet -e ".[test]"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
exec "$PYTHON" scripts/quickstart.py "$@"
