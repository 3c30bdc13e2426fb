"""The environment variables that say which hub to download from, whether to go online, and where the hubs are.

One place for them, read when asked (not at import), so a test or a user's `export` takes effect at once:
- USE_HF=1: the Hugging Face Hub instead of ModelScope when `--use_hf` is not given;
- HF_HUB_OFFLINE=1 / HF_DATASETS_OFFLINE=1: read the Hugging Face caches only (huggingface_hub's and
  `datasets`' own switches; we read them to skip the reachability probe);
- HF_ENDPOINT, MODELSCOPE_DOMAIN: the hubs' addresses (mirrors), probed before a download.
Used by swiftlite/data.py, swiftlite/dataset_registry/sources.py and swiftlite/models/loading.py.
"""

from __future__ import annotations

import os

TRUE_WORDS = ("1", "true", "yes")


def env_flag(name: str) -> bool:
    """An on/off environment variable: 1/true/yes (any case) is on, anything else or unset is off."""
    return os.environ.get(name, "0").lower() in TRUE_WORDS


def use_hf_default() -> bool:
    """USE_HF: whether downloads come from the Hugging Face Hub when `--use_hf` is not given."""
    return env_flag("USE_HF")


def hf_offline() -> bool:
    """HF_HUB_OFFLINE or HF_DATASETS_OFFLINE: the Hugging Face caches only, no network."""
    return env_flag("HF_HUB_OFFLINE") or env_flag("HF_DATASETS_OFFLINE")


def hf_hub_reachable(timeout: float = 5.0) -> bool:
    """Whether HF_ENDPOINT (default huggingface.co) accepts a connection; without this check the hub client
    retries with back-off for half a minute before giving up."""
    import urllib.parse

    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return _reachable(endpoint.hostname, endpoint.port or 443, timeout)


def modelscope_reachable(timeout: float = 5.0) -> bool:
    """Whether MODELSCOPE_DOMAIN (default www.modelscope.cn) accepts a connection on 443."""
    return _reachable(os.environ.get("MODELSCOPE_DOMAIN", "www.modelscope.cn"), 443, timeout)


def _reachable(host: str | None, port: int, timeout: float) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False
