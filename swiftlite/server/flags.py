"""The flags of `mm deploy`, typed and grouped by concern, built once in the command function and passed down.

`swiftlite.deploy.deploy`'s signature owns the defaults and the --help text; the groups hold its flags field for
field. Each group checks its own flags (`check()`, called by `mm deploy` before the load, which can take
minutes); `build_app`, the Python API, builds the same groups from its keywords and loads without the checks.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from swiftlite.errors import UserError
from swiftlite.options import flag_groups


@dataclass(frozen=True)
class ModelFlags:
    """What is served: the model, its template, its adapters and their names."""
    model_type: str | None
    model: str | None
    ckpt_dir: str | None
    adapters: list[str] | None  # ms-swift's spelling of --ckpt_dir and --lora_modules: split_adapters()
    lora_modules: list[str] | None
    template_type: str | None
    system: str | None
    dtype: str
    device_map: str | None
    use_hf: bool | None
    max_pixels: int | None
    served_model_name: str | None
    merge_lora: bool

    def check(self) -> None:
        from swiftlite.models.loading import DTYPE_ALIASES

        if self.dtype.lower() != "auto" and self.dtype.lower() not in DTYPE_ALIASES:
            raise UserError(f"--dtype {self.dtype}: expected auto, bf16, fp16 or fp32")
        parse_lora_modules(self.lora_modules)


@dataclass(frozen=True)
class EngineFlags:
    """Who generates (transformers or vLLM) and how requests are batched."""
    infer_backend: str
    engine: str
    max_batch_size: int
    batch_wait_ms: float
    max_queue: int
    max_num_batched_tokens: int | None

    def check(self) -> None:
        if self.engine not in ("step", "static"):
            raise UserError(f"--engine {self.engine}: expected step or static")
        if self.engine == "static" and self.max_num_batched_tokens is not None:
            raise UserError("--max_num_batched_tokens needs --engine step (the static engine admits by rows only)")
        check_positive(self, "max_batch_size", "max_queue", "max_num_batched_tokens")
        check_not_negative(self, "batch_wait_ms")


@dataclass(frozen=True)
class VllmFlags:
    """vLLM's engine flags; `swiftlite.deploy.vllm_flags` checks them (shared with `mm infer`)."""
    tensor_parallel_size: int
    gpu_memory_utilization: float
    enforce_eager: bool


@dataclass(frozen=True)
class LimitFlags:
    """What one request may ask for."""
    max_model_len: int | None
    max_new_tokens: int
    max_request_bytes: int
    limit_mm_per_prompt: str | None

    def check(self) -> None:
        check_positive(self, "max_new_tokens", "max_request_bytes")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise UserError(f"--max_model_len {self.max_model_len}: expected at least 2 tokens")
        parse_limit_mm(self.limit_mm_per_prompt)


@dataclass(frozen=True)
class MediaFlags:
    """What requests may make the server read: local files, URLs, and how much."""
    allowed_local_media_path: str | None
    media_fetch: bool
    media_fetch_timeout: float
    max_media_bytes: int
    allowed_media_domains: list[str] | None

    def check(self) -> None:
        check_positive(self, "max_media_bytes", "media_fetch_timeout")
        check_host_names("allowed_media_domains", self.allowed_media_domains)
        media_dir = self.allowed_local_media_path
        if media_dir is not None and not Path(media_dir).expanduser().is_dir():
            raise UserError(f"--allowed_local_media_path {media_dir}: no such directory")


@dataclass(frozen=True)
class ServerFlags:
    """HTTP and security: where the server listens, who may call it, TLS, logging, shutdown, the chat page."""
    host: str
    port: int
    api_key: str | None
    ssl_keyfile: str | None
    ssl_certfile: str | None
    log_level: str
    allowed_hosts: list[str] | None
    cors_origins: list[str] | None
    request_timeout: float
    shutdown_timeout: float
    web_ui: bool

    def check(self) -> None:
        check_positive(self, "request_timeout")
        check_not_negative(self, "shutdown_timeout")
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port {self.port}: expected 0 to 65535")
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("--api_key is empty: give a secret, or leave the flag out for an open server")
        if bool(self.ssl_keyfile) != bool(self.ssl_certfile):
            raise UserError("--ssl_keyfile and --ssl_certfile go together: give both for HTTPS, or neither")
        for name in ("ssl_keyfile", "ssl_certfile"):
            if getattr(self, name) and not Path(getattr(self, name)).is_file():
                raise UserError(f"--{name} {getattr(self, name)}: no such file")
        if self.log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise UserError(f"--log_level {self.log_level}: expected critical, error, warning, info or debug")
        check_host_names("allowed_hosts", self.allowed_hosts)
        for value in self.cors_origins or []:
            if value != "*" and not value.startswith(("http://", "https://")):
                raise UserError(f"--cors_origins {value!r}: expected an origin such as https://app.example.com, "
                                "or '*'")


@dataclass(frozen=True)
class DeployFlags:
    model: ModelFlags
    engine: EngineFlags
    vllm: VllmFlags
    limits: LimitFlags
    media: MediaFlags
    server: ServerFlags

    @classmethod
    def from_dict(cls, values: dict) -> DeployFlags:
        """From the flat mapping of every flag (the parameters of `mm deploy`), each flag exactly once."""
        return flag_groups(cls, values, "mm deploy")

    def check(self) -> None:
        """Fail on a bad flag before loading anything (the load can take minutes)."""
        for group in (self.engine, self.limits, self.server, self.model, self.media):
            group.check()


def check_positive(group, *names: str) -> None:
    for name in names:
        value = getattr(group, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name} {value}: expected a positive number")


def check_not_negative(group, *names: str) -> None:
    for name in names:
        if getattr(group, name) < 0:
            raise UserError(f"--{name} {getattr(group, name)}: expected a number >= 0")


def check_host_names(flag: str, values: list[str] | None) -> None:
    for value in values or []:
        if not value or any(char.isspace() or char in "/@" for char in value):
            raise UserError(f"--{flag} {value!r}: expected a host name (no scheme, no path), such as "
                            "media.example.com")


def parse_lora_modules(values: list[str] | None) -> list[tuple[str, str]]:
    modules, names = [], set()
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--lora_modules {value}: expected NAME=DIR, e.g. --lora_modules "
                            "style=output/checkpoint-50")
        if name in names:
            raise UserError(f"--lora_modules: the name {name!r} is given twice")
        if not (Path(path).expanduser() / "adapter_config.json").is_file():
            raise UserError(f"--lora_modules {value}: {path} holds no adapter_config.json (not a LoRA checkpoint)")
        names.add(name)
        modules.append((name, str(Path(path).expanduser().resolve())))
    return modules


def parse_limit_mm(value: str | None) -> dict[str, int]:
    """'image=4,audio=1' (vLLM's older spelling) or '{"image": 4}' (JSON, as vLLM and Xinference take it)."""
    if not value:
        return {}
    try:
        pairs = json.loads(value).items() if value.strip().startswith("{") else \
            [item.split("=", 1) for item in value.split(",") if item.strip()]
        limits = {str(kind).strip(): int(count) for kind, count in pairs}
    except (ValueError, AttributeError, json.JSONDecodeError):
        raise UserError(f"--limit_mm_per_prompt {value}: expected image=N,audio=M or JSON like "
                        "'{\"image\": 4}'") from None
    for kind, count in limits.items():
        if kind not in ("image", "audio"):
            raise UserError(f"--limit_mm_per_prompt {value}: unknown kind {kind!r} (expected image or audio)")
        if count < 0:
            raise UserError(f"--limit_mm_per_prompt {value}: {kind}={count} must be >= 0")
    return limits
