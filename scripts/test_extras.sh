#!/usr/bin/env bash
# The extras lane: the optional training engines that the main lane only checks the "not installed" line of.
# In its own venv over the system python's packages (torch 2.13.0 CPU, transformers, peft, ...): deepspeed
# (--deepspeed default-zero3 must partition the weights while they load: training arguments before the model)
# and bitsandbytes 0.50, which runs nf4 and LLM.int8 on the CPU (--quant_bits 4|8). .ci/run calls it after the
# torchvision lane. Measured on a fresh venv and an empty ~/.cache/torch_extensions: 2 min 29 s in all, of it
# the ZeRO-3 run about 100 s (DeepSpeed builds an op with ninja + g++ once; 25 s after) and QLoRA 8 s.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${EXTRAS_VENV:-.venv-extras}
if ! "$VENV/bin/python" -c "import deepspeed, bitsandbytes" >/dev/null 2>&1; then
    python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip install --quiet "deepspeed==0.19.8" "bitsandbytes==0.50.2"
fi
# The tests below fall back to checking the refusal when a package is missing: here both must be present.
"$VENV/bin/python" -c "import deepspeed, bitsandbytes" >/dev/null
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_cuda_paths.py -k "zero3 or qlora" "$@"
