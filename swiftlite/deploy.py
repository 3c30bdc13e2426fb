"""Serve a model over an OpenAI-compatible HTTP API (chat, completions, LoRA adapters by name, batching).

    mm deploy --model_type qwen2-vl-2b-instruct
    mm deploy --ckpt_dir output/qwen2-vl-2b-instruct/v0-xxx/checkpoint-100      # LoRA or -merged checkpoint
    mm deploy --model DIR --lora_modules style=out/ckpt-50 --api_key SECRET --port 8000

Call it with curl, the official `openai` SDK (base_url http://HOST:PORT/v1) or `swiftlite.client`; requests may
carry images as http(s) URLs, data URLs, base64 or `<img>...</img>` tags. See docs/deploy.md for the API,
the error codes and the security options. The server answers on 127.0.0.1 unless --host says otherwise.
Open http://HOST:PORT/ in a browser for a chat page (images, audio, streaming; docs/web_ui.md).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

from swiftlite.errors import UserError
from swiftlite.options import flag, opt
from swiftlite.server.flags import DeployFlags, ServerFlags, parse_limit_mm, parse_lora_modules

S = "Server: "  # help prefixes that group the flags in --help
L = "Limits: "
M = "Media: "
V = "vLLM (--infer_backend vllm): "


def deploy(
    model_type: Annotated[str | None, opt("model_type", "Registered model type, e.g. qwen2-vl-2b-instruct (`mm list`).")] = None,
    model: Annotated[str | None, opt("model", "Local checkpoint directory or hub id.", "--model_id_or_path", "--model-id-or-path")] = None,
    ckpt_dir: Annotated[str | None, opt("ckpt_dir", "Checkpoint of `mm sft` (LoRA: served with its adapter applied) or of "
                                        "`mm export` (-merged); its sft_args.json names the base model.")] = None,
    template_type: Annotated[str | None, opt("template_type", "Template override (default: the model's; `mm list templates`).", "--template")] = None,
    system: Annotated[str | None, opt("system", "Default system prompt for chat requests that bring none.")] = None,
    dtype: Annotated[str, opt("dtype", "auto, bf16, fp16 or fp32 (auto: the checkpoint's dtype on GPU, fp32 on CPU).", "--torch_dtype")] = "auto",
    device_map: Annotated[str | None, opt("device_map", "transformers device_map, e.g. auto to spread a large model over "
                                          "all visible GPUs (default: one device, CUDA when available).")] = None,
    use_hf: Annotated[bool | None, flag("use_hf", "Download from the Hugging Face Hub instead of ModelScope (also USE_HF=1).")] = None,
    max_pixels: Annotated[int | None, opt("max_pixels", "Downscale larger images to at most this many pixels.")] = None,
    host: Annotated[str, opt("host", S + "address to listen on; 0.0.0.0 exposes the server to the network.")] = "127.0.0.1",
    port: Annotated[int, opt("port", S + "TCP port.")] = 8000,
    api_key: Annotated[str | None, opt("api_key", S + "require 'Authorization: Bearer KEY' on /v1 routes "
                                       "(default: open; set it whenever --host is not 127.0.0.1).")] = None,
    served_model_name: Annotated[str | None, opt("served_model_name", S + "the model's name in /v1/models and in "
                                                 "requests' `model` (default: the model type).")] = None,
    lora_modules: Annotated[list[str] | None, opt("lora_modules", S + "extra LoRA adapters, each served under its own "
                                                  "name: --lora_modules NAME=DIR NAME2=DIR2.")] = None,
    max_batch_size: Annotated[int, opt("max_batch_size", S + "most rows (prompts x n) generated together in one batch.")] = 16,
    batch_wait_ms: Annotated[float, opt("batch_wait_ms", S + "how long a new batch may wait for requests still "
                                        "expected (the clients of the batch that just ended), in milliseconds.")] = 50.0,
    max_queue: Annotated[int, opt("max_queue", S + "most requests waiting for a batch; more get HTTP 429.")] = 256,
    merge_lora: Annotated[bool, flag("merge_lora", S + "merge a LoRA --ckpt_dir into the weights in memory at load "
                                     "when it is the only adapter served (no --lora_modules): as fast as a merged "
                                     "checkpoint; false keeps peft's adapter layers.")] = True,
    engine: Annotated[str, opt("engine", S + "step (default): rows join and leave between decode steps, all "
                               "running rows decoded in one batched forward (lowest time to first token, most "
                               "tokens/s); static: whole batches, a new request waits for the running batch to end "
                               "(docs/deploy.md, \"Batching\").")] = "step",
    max_num_batched_tokens: Annotated[int | None, opt("max_num_batched_tokens", S + "token budget of the running "
                                                      "rows (each: prompt + max_tokens) with --engine step; requests "
                                                      "over it wait (default: no budget, rows only).")] = None,
    shutdown_timeout: Annotated[float, opt("shutdown_timeout", S + "on SIGTERM/Ctrl-C, seconds in-flight requests "
                                           "may take to finish; then they end with finish_reason abort.")] = 10.0,
    log_level: Annotated[str, opt("log_level", S + "uvicorn log level: critical, error, warning, info, debug.")] = "info",
    ssl_keyfile: Annotated[str | None, opt("ssl_keyfile", S + "serve HTTPS with this private key (with --ssl_certfile).")] = None,
    ssl_certfile: Annotated[str | None, opt("ssl_certfile", S + "serve HTTPS with this certificate (with --ssl_keyfile).")] = None,
    max_model_len: Annotated[int | None, opt("max_model_len", L + "longest prompt + completion in tokens; longer "
                                             "requests get a 400 (default: the model's max_position_embeddings); "
                                             "vLLM's max_model_len too.", "--vllm_max_model_len")] = None,
    max_new_tokens: Annotated[int, opt("max_new_tokens", L + "completion length when a request gives no max_tokens.")] = 2048,
    max_request_bytes: Annotated[int, opt("max_request_bytes", L + "largest request body; larger get HTTP 413.")] = 32 * 1024 * 1024,
    limit_mm_per_prompt: Annotated[str | None, opt("limit_mm_per_prompt", L + "most media per request, e.g. image=4,audio=1 "
                                                   "or '{\"image\": 4}' (default: no limit).",
                                                   "--vllm_limit_mm_per_prompt")] = None,
    allowed_local_media_path: Annotated[str | None, opt("allowed_local_media_path", M + "let requests name local files "
                                                        "(paths, file:// URLs) under this directory; relative paths "
                                                        "resolve in it (default: local files refused).")] = None,
    media_fetch: Annotated[bool, flag("media_fetch", M + "fetch http(s) image/audio URLs named in requests.")] = True,
    media_fetch_timeout: Annotated[float, opt("media_fetch_timeout", M + "seconds allowed for fetching one URL.")] = 10.0,
    max_media_bytes: Annotated[int, opt("max_media_bytes", M + "largest fetched or base64 media item in bytes.")] = 20 * 1024 * 1024,
    web_ui: Annotated[bool, flag("web_ui", S + "serve a chat page at / (images, audio, streaming; calls this "
                                 "server's /v1 API): --web_ui false turns it off.")] = True,
    adapters: Annotated[list[str] | None, opt("adapters", "ms-swift 3.x/4.x: DIR (as --ckpt_dir) and/or NAME=DIR (as "
                                              "--lora_modules): --adapters lora1=out/ckpt-50 lora2=out/ckpt-80.")] = None,
    infer_backend: Annotated[str, opt("infer_backend", "pt (= transformers, ms-swift 4.x's name): generation with "
                                      "transformers; vllm: generation with vLLM (docs/deploy.md#vllm).")] = "pt",
    # The vLLM flags' second spellings are ms-swift 4.x's (--vllm_tensor_parallel_size, ...); 2.x and 3.x had these.
    tensor_parallel_size: Annotated[int, opt("tensor_parallel_size", V + "GPUs one model is split over.",
                                             "--vllm_tensor_parallel_size")] = 1,
    gpu_memory_utilization: Annotated[float, opt("gpu_memory_utilization", V + "share of GPU memory vLLM may take "
                                                 "(weights and KV cache).", "--vllm_gpu_memory_utilization")] = 0.9,
    enforce_eager: Annotated[bool, flag("enforce_eager", V + "no CUDA graphs (starts faster, decodes slower).",
                                        "vllm_enforce_eager")] = False,
    allowed_media_domains: Annotated[list[str] | None, opt("allowed_media_domains", M + "fetch media URLs only from "
                                                           "these host names, whatever address they have (loopback "
                                                           "and private included); default: any host with a public "
                                                           "address, never loopback or private ones.")] = None,
    allowed_hosts: Annotated[list[str] | None, opt("allowed_hosts", S + "Host header values accepted besides the "
                                                   "loopback names (DNS-rebinding guard; applies when --host is "
                                                   "loopback, or to any --host when given); '*' accepts any.")] = None,
    request_timeout: Annotated[float, opt("request_timeout", S + "seconds a client may take to send a request's "
                                          "headers, and again its body; slower ones get HTTP 408.")] = 30.0,
    cors_origins: Annotated[list[str] | None, opt("cors_origins", S + "browser origins allowed to call the API from "
                                                  "other sites, e.g. https://app.example.com or '*' (default: no "
                                                  "CORS headers).")] = None,
) -> None:
    flags = resolve_flags(DeployFlags.from_dict(locals()))  # the flags, typed and grouped, from here down
    vllm_options = vllm_flags(flags.engine.infer_backend, flags.vllm.tensor_parallel_size,
                              flags.vllm.gpu_memory_utilization, flags.limits.max_model_len,
                              flags.limits.limit_mm_per_prompt, flags.vllm.enforce_eager)
    flags.check()
    # Bound before the load, which can take minutes: a busy port fails at once.
    sock = listen(flags.server.host, flags.server.port)
    serve(load_app(flags, vllm_options), sock, flags.server)


# ---- flags -----------------------------------------------------------------------------------------------
def resolve_flags(flags: DeployFlags) -> DeployFlags:
    """The flags as served: --infer_backend by its canonical name, --adapters split into --ckpt_dir/--lora_modules."""
    from swiftlite.infer import check_infer_backend
    from swiftlite.models.checkpoint import checkpoint_given_as_model

    engine = dataclasses.replace(flags.engine, infer_backend=check_infer_backend(flags.engine.infer_backend))
    ckpt_dir, lora_modules = split_adapters(flags.model.adapters, flags.model.ckpt_dir, flags.model.lora_modules)
    base, ckpt_dir = checkpoint_given_as_model(flags.model.model, ckpt_dir)
    model = dataclasses.replace(flags.model, model=base, ckpt_dir=ckpt_dir, lora_modules=lora_modules, adapters=None)
    return dataclasses.replace(flags, model=model, engine=engine)


def vllm_flags(infer_backend, tensor_parallel_size, gpu_memory_utilization, max_model_len, limit_mm_per_prompt,
               enforce_eager):
    """vLLM's engine flags, checked now; on pt, a vLLM-only flag that differs from its default is a mistake."""
    from swiftlite.engine.vllm_engine import VllmOptions, require_vllm

    if infer_backend != "vllm":
        for name, value, default in (("tensor_parallel_size", tensor_parallel_size, 1),
                                     ("gpu_memory_utilization", gpu_memory_utilization, 0.9),
                                     ("enforce_eager", enforce_eager, False)):
            if value != default:
                raise UserError(f"--{name} is a vLLM flag (also when spelled --vllm_{name}): it needs "
                                "--infer_backend vllm")
        return None
    require_vllm()
    options = VllmOptions(tensor_parallel_size, gpu_memory_utilization, max_model_len,
                          parse_limit_mm(limit_mm_per_prompt) or None, enforce_eager)
    options.check()
    return options


def split_adapters(adapters: list[str] | None, ckpt_dir: str | None, lora_modules: list[str] | None):
    """ms-swift 3.x/4.x `--adapters`: a plain DIR is the checkpoint to serve, NAME=DIR an extra named adapter."""
    plain = [value for value in adapters or [] if "=" not in value]
    named = [value for value in adapters or [] if "=" in value]
    if len(plain) > 1 or (plain and ckpt_dir and plain[0] != ckpt_dir):
        given = plain + ([ckpt_dir] if ckpt_dir and ckpt_dir not in plain else [])
        raise UserError(f"--adapters/--ckpt_dir: one checkpoint is served as the model, got {' and '.join(given)}; "
                        "name the others NAME=DIR to serve them as adapters")
    return (plain[0] if plain else ckpt_dir), (list(lora_modules or []) + named) or None


# ---- load and assemble -----------------------------------------------------------------------------------
def build_app(vllm_options=None, **options):
    """Load the model and its adapters, start nothing yet, and return the starlette app (`mm deploy` minus uvicorn).

    Python API: takes the flags of `mm deploy` as keyword arguments (defaults as on the command line; those of
    listening, TLS and logging are unused here) and vLLM's engine options as `vllm_options` (a VllmOptions).
    """
    import inspect

    defaults = {name: parameter.default for name, parameter in inspect.signature(deploy).parameters.items()}
    return load_app(resolve_flags(DeployFlags.from_dict({**defaults, **options})), vllm_options)


def load_app(flags: DeployFlags, vllm_options=None):
    """The app of `build_app`, from the flags (checked by `mm deploy`, taken as given by the Python API)."""
    from swiftlite.engine.step_loop import StepEngine
    from swiftlite.engine.worker import BatchingEngine
    from swiftlite.media import MediaPolicy
    from swiftlite.models.checkpoint import load_for_inference
    from swiftlite.server.app import ServedModel, ServerSettings, create_app
    from swiftlite.server.metrics import Metrics
    from swiftlite.server.protocol import RequestLimits

    what, batching, media, server = flags.model, flags.engine, flags.media, flags.server
    # 1. What requests may read: local files only under --allowed_local_media_path, URLs unless refused.
    local = media.allowed_local_media_path
    media_dir = str(Path(local).expanduser().resolve()) if local else None
    # URLs: public addresses only, or only the --allowed_media_domains hosts (docs/deploy.md, "Security").
    policy = MediaPolicy(allowed_local_dir=media_dir, allow_local=media_dir is not None, allow_urls=media.media_fetch,
                         fetch_timeout=media.media_fetch_timeout, max_bytes=media.max_media_bytes, base_dir=media_dir,
                         public_urls_only=True, max_aspect_ratio=200,
                         allowed_media_domains=tuple(media.allowed_media_domains) if media.allowed_media_domains
                         else None)
    adapters = parse_lora_modules(what.lora_modules)

    # 2. The model, its template and the adapters: the model's own name, then each --lora_modules name.
    on_vllm = batching.infer_backend == "vllm"
    if on_vllm:  # vLLM loads the weights, and the adapters through its own LoRA
        from swiftlite.engine.vllm_engine import load_for_vllm

        loaded = load_for_vllm(what.model_type, what.model, what.ckpt_dir, what.dtype, what.use_hf, what.system,
                               what.max_pixels, policy, what.template_type,
                               [(f"lora{index}", path) for index, (_, path) in enumerate(adapters)], vllm_options)
    else:
        loaded = load_for_inference(what.model_type, what.model, what.ckpt_dir, what.dtype, what.device_map,
                                    what.use_hf, what.system, what.max_pixels, policy, what.template_type)
    # Decompression bombs: a header declaring more pixels than 4x what the model takes is refused undecoded.
    policy.max_image_pixels = max(4 * (model_max_pixels(loaded.template) or 0), 4096 * 4096)
    name = what.served_model_name or loaded.resolved.model_type
    is_chat = bool(loaded.template.chat_template) and loaded.resolved.is_chat
    is_multimodal = any(kind in loaded.resolved.family.modalities for kind in ("image", "audio", "video"))
    root = str(loaded.checkpoint.ckpt_dir) if loaded.checkpoint else str(loaded.resolved.model_dir)
    modalities = tuple(loaded.resolved.family.modalities)
    model_object = loaded.model
    served_adapter = "default" if loaded.adapters else None  # vLLM's LoRA, or peft's adapter named "default"
    if not on_vllm and what.merge_lora and loaded.adapters and not adapters and mergeable(model_object):
        # One adapter and no base model to serve beside it: merged weights skip peft's LoRA layers at every step.
        model_object = model_object.merge_and_unload()
        model_object.eval()
        served_adapter = None
    served = [ServedModel(name, served_adapter, root, None, is_chat, is_multimodal, modalities=modalities)]
    for index, (adapter_name, path) in enumerate(adapters):
        if adapter_name == name:
            raise UserError(f"--lora_modules {adapter_name}={path}: the name is the served model's own; choose another")
        internal = f"lora{index}"  # peft adapter names become module keys: keep users' names (dots...) out of them
        if not on_vllm:
            model_object = load_adapter(model_object, path, internal, adapter_name)
        else:  # vLLM loads it itself: the same one-line check of its files first
            from swiftlite.models.integrity import check_adapter

            check_adapter(Path(path))
        served.append(ServedModel(adapter_name, internal, path, name, is_chat, is_multimodal, modalities=modalities))

    # 3. The engine that owns the model, and the HTTP app in front of it. The checkpoint's sampling defaults are
    # read first: the step engine strips the model's generation_config for its life.
    generation_config = getattr(model_object, "generation_config", None)
    if generation_config is not None:
        import copy

        generation_config = copy.deepcopy(generation_config)
    metrics = Metrics()
    rows, queue = batching.max_batch_size, batching.max_queue
    if on_vllm:
        from swiftlite.engine.vllm_engine import VllmEngine

        engine = VllmEngine(model_object, max_batch_size=rows, max_queue=queue, metrics=metrics)
    elif batching.engine == "static":
        engine = BatchingEngine(model_object, loaded.template, max_batch_size=rows, max_queue=queue,
                                batch_wait=batching.batch_wait_ms / 1000, metrics=metrics)
    else:
        engine = StepEngine(model_object, loaded.template, max_batch_size=rows, max_queue=queue,
                            batch_wait=batching.batch_wait_ms / 1000, metrics=metrics,
                            max_num_batched_tokens=batching.max_num_batched_tokens)
    limits = RequestLimits(max_batch_size=rows, limit_mm_per_prompt=parse_limit_mm(flags.limits.limit_mm_per_prompt),
                           max_model_len=flags.limits.max_model_len or model_max_length(loaded.tokenizer),
                           default_max_tokens=flags.limits.max_new_tokens)
    settings = ServerSettings(api_key=server.api_key, max_request_bytes=flags.limits.max_request_bytes, limits=limits,
                              shutdown_timeout=server.shutdown_timeout, web_ui=server.web_ui, bind_host=server.host,
                              allowed_hosts=list(server.allowed_hosts) if server.allowed_hosts else None,
                              cors_origins=list(server.cors_origins) if server.cors_origins else None,
                              request_timeout=server.request_timeout)
    return create_app(engine, loaded.template, served, settings, generation_config, metrics)


def mergeable(model) -> bool:
    """Whether LoRA can be merged into the weights exactly: not into quantized (bitsandbytes, GPTQ...) layers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return not (getattr(base, "is_quantized", False) or getattr(base, "hf_quantizer", None) is not None
                or getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def load_adapter(model, path: str, internal_name: str, public_name: str):
    """Add one LoRA adapter to the model (wrapping it in a PeftModel the first time)."""
    from peft import PeftModel

    from swiftlite.models.checkpoint import peft_model_from_pretrained
    from swiftlite.models.integrity import check_adapter

    check_adapter(Path(path))  # whole, finite, of its rank: one line naming the file, as for --ckpt_dir
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(path, adapter_name=internal_name)
        else:
            model = peft_model_from_pretrained(model, path, adapter_name=internal_name)
    except Exception as error:  # shape mismatch, wrong base model, broken files: all the user's to fix
        raise UserError(f"--lora_modules {public_name}={path}: cannot load it onto this model "
                        f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    model.eval()
    return model


def model_max_pixels(template) -> int | None:
    """The most pixels the model's image processor keeps (Qwen's max_pixels, or a fixed height x width)."""
    if template.max_pixels:
        return template.max_pixels
    processor = getattr(template, "image_processor", None)
    value = getattr(processor, "max_pixels", None)
    if isinstance(value, int) and value > 0:
        return value
    size = getattr(processor, "size", None)
    if isinstance(size, dict) and isinstance(size.get("height"), int) and isinstance(size.get("width"), int):
        return size["height"] * size["width"]
    return None


def model_max_length(tokenizer) -> int:
    """The longest sequence the model takes: text_config.max_position_embeddings, as vLLM derives it."""
    config = getattr(tokenizer, "swiftlite_model_config", None) or {}
    for section in (config.get("text_config") or {}, config.get("llm_config") or {}, config):
        value = section.get("max_position_embeddings") or section.get("seq_length")
        if isinstance(value, int) and value > 0:
            return value
    length = getattr(tokenizer, "model_max_length", None)
    return length if isinstance(length, int) and 0 < length < 10**7 else 4096


# ---- run -------------------------------------------------------------------------------------------------
def listen(host: str, port: int):
    """The server's socket, bound here so that a busy port is one clear line rather than uvicorn's log and exit."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as error:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({error.strerror or error}); "
                        "choose another --port or stop the other server") from None
    return sock


def serve(app, sock, server: ServerFlags) -> None:
    """Run uvicorn on the bound socket until SIGTERM or Ctrl-C; in-flight requests get --shutdown_timeout seconds."""
    import signal

    import uvicorn

    scheme = "https" if server.ssl_certfile else "http"
    models = ", ".join(m.name for m in app.state.server.models)
    address = f"{scheme}://{server.host}:{sock.getsockname()[1]}"
    print(f"[INFO:swiftlite] serving {models} on {address}/v1", file=sys.stderr)
    if app.state.server.settings.web_ui:
        print(f"[INFO:swiftlite] chat page: {address}/ (--web_ui false turns it off)", file=sys.stderr)
    if server.api_key is None and server.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[WARNING:swiftlite] --host {server.host} without --api_key: anyone who can reach this port can use "
              "the model", file=sys.stderr)
    engine = app.state.server.engine

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/Ctrl-C, in-flight generations get --shutdown_timeout seconds, then end with finish_reason
        "abort", so their clients still receive a well-formed answer before uvicorn closes the connections."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            engine.drain(server.shutdown_timeout)

    # uvicorn's own bound comes a little later than ours: it is for flushing the aborted answers.
    from swiftlite.server.connection import guarded_protocol

    # h11 with slow request heads timed out and half-closed clients answered (swiftlite/server/connection.py).
    config = uvicorn.Config(app, log_level=server.log_level, timeout_graceful_shutdown=server.shutdown_timeout + 5,
                            ssl_keyfile=server.ssl_keyfile, ssl_certfile=server.ssl_certfile,
                            http=guarded_protocol(app.state.server.settings.request_timeout))
    # uvicorn re-raises the signal that stopped it once it has shut down cleanly. With the default handlers
    # that would kill the process (exit 143 for SIGTERM) after a clean shutdown; these make it exit 0.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda *_: None)
    DrainingServer(config).run(sockets=[sock])
