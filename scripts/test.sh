#!/usr/bin/env bash
# Install swiftlite with its test extra and run the whole test suite (the README's test command; CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# torch first: an unpinned torch pulls several GB of CUDA wheels on a machine without one. On this project's
# CPU machines `torch==2.13.0` resolves to the local CPU wheel; a GPU user installs torch per pytorch.org first.
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
"$PYTHON" -m pip install --quiet -e ".[test]"
# The web page's tests drive Debian's Chromium through Playwright (no browser download: offline-safe).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
exec "$PYTHON" -m pytest -q -p no:cacheprovider "$@"
