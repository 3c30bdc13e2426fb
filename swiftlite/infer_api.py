"""ms-swift's Python API for chatting with a loaded model: `inference` and `inference_stream`.

    model, tokenizer = get_model_tokenizer(model_type)
    template = get_template(template_type, tokenizer)
    response, history = inference(model, template, 'Picture 1:<img>cat.png</img>\\nWhat is this?')
    for response, history in inference_stream(model, template, 'And its colour?', history):
        ...

`history` is a list of [query, response] pairs, exactly as ms-swift returns it: queries are kept as the user
wrote them (``<img>..</img>`` tags included), so passing the history back re-attaches every earlier image.
`images=` / `audios=` list media for ``<image>`` / ``<audio>`` placeholders of the whole conversation (earlier
turns included), as in ms-swift; with no placeholder at all they belong to the first user turn. rtp-llm's
``<img/>`` placeholders take them in order too, and `urls=` is rtp-llm's name for `images=`:

    response, history = inference(model, template, 'Picture 1:<img/>\\n这是什么', urls=['demo.jpeg'])

Both functions build on `swiftlite.engine.generate.generate`; the streaming one runs it in a worker thread
and passes text deltas through a queue. The `StreamingGeneration` helper below is shared with `mm infer`.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

from swiftlite.conversation import Conversation, conversation_from_query

# Keyword arguments accepted as **sampling (the names of `mm infer`'s generation flags).
SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "do_sample", "seed")


def sampling_params(model=None, generation_config=None, stop_words=None, **sampling):
    """SamplingParams: the checkpoint's generation_config (or the one given), then the keyword overrides."""
    from swiftlite.engine.generate import SamplingParams

    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise TypeError(f"unexpected sampling argument(s) {', '.join(unknown)}; expected some of {', '.join(SAMPLING_KEYS)}")
    if generation_config is None and model is not None:
        generation_config = getattr(model, "generation_config", None)
    params = SamplingParams.from_generation_config(generation_config, **sampling)
    params.stop = list(stop_words or [])
    return params


class _DropGenerationFlagWarning:
    """transformers warns that the checkpoint's temperature/top_p/top_k "may be ignored" because the engine
    calls `generate` greedily; they are not ignored (the engine's own sampler applies them), so the
    warning would only mislead users in the middle of a chat."""

    def filter(self, record) -> bool:
        return "generation flags are not valid" not in record.getMessage()


def quiet_generation_flag_warning() -> None:
    import logging

    logger = logging.getLogger("transformers.generation.configuration_utils")
    if not any(isinstance(f, _DropGenerationFlagWarning) for f in logger.filters):
        logger.addFilter(_DropGenerationFlagWarning())


def history_pairs(history) -> list[list[str]]:
    """Accept [[q, r], ...] or [(q, r), ...] and check the shape, naming the bad entry."""
    pairs = []
    for index, pair in enumerate(history or []):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"history[{index}] must be a [query, response] pair, got {pair!r:.80}")
        pairs.append([pair[0], pair[1]])
    return pairs


def build_conversation(query: str, history=None, system: str | None = None, images=None, audios=None,
                       urls=None) -> Conversation:
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, got {type(query).__name__}")
    if urls is not None:  # rtp-llm's pipeline(prompt, urls=[...])
        if images is not None:
            raise TypeError("give the images as images= or as urls= (rtp-llm's name), not both")
        images = urls
    return conversation_from_query(query, history_pairs(history), system, images, audios)


class StreamingGeneration:
    """`generate` for one encoded row in a worker thread; iterating yields text deltas as they appear.

    `cancel()` (or leaving the iteration early) stops the generation at the next token; `result` holds the
    RowResult once the iteration has ended. An exception in the worker is re-raised in the iterating thread.
    """

    def __init__(self, model, template, row: dict, params, adapter_names: list[str] | None = None):
        self.model, self.template, self.row, self.params = model, template, row, params
        self.adapter_names = adapter_names
        self.result = None
        self._deltas: queue.Queue = queue.Queue()
        self._cancelled = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="swiftlite-generate", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        from swiftlite.engine.generate import generate

        try:
            results = generate(
                self.model, self.template, [self.row], [self.params],
                on_delta=lambda _row, delta: self._deltas.put(delta),
                cancelled=lambda _row: self._cancelled.is_set(),
                adapter_names=self.adapter_names,
            )
            self.result = results[0]
        except BaseException as error:  # handed to the consuming thread
            self._error = error
        finally:
            self._deltas.put(None)

    def cancel(self) -> None:
        self._cancelled.set()

    def __iter__(self) -> Iterator[str]:
        try:
            while True:
                try:
                    # A timeout keeps the consuming thread responsive to Ctrl-C.
                    delta = self._deltas.get(timeout=0.1)
                except queue.Empty:
                    continue
                if delta is None:
                    break
                yield delta
        finally:
            if self._thread.is_alive():
                self.cancel()
                self._thread.join()
        if self._error is not None:
            raise self._error


def _prepare(model, template, query, history, system, images, audios, generation_config, stop_words,
             sampling, urls=None) -> tuple[dict, object, list[list[str]]]:
    quiet_generation_flag_warning()
    pairs = history_pairs(history)
    conversation = build_conversation(query, pairs, system, images, audios, urls)
    params = sampling_params(model, generation_config, stop_words, **sampling)
    row = template.encode(conversation, add_generation_prompt=True)
    return row, params, pairs


def inference(model, template, query: str, history=None, system: str | None = None, images=None, audios=None,
              generation_config=None, stop_words: list[str] | None = None, adapter_names: list[str] | None = None,
              urls=None, **sampling) -> tuple[str, list[list[str]]]:
    """One reply to `query` after `history`. Returns (response, history + [[query, response]]).

    Generation settings come from `generation_config` (default: `model.generation_config`, so setting
    `model.generation_config.max_new_tokens = 256` works as in ms-swift), then from `sampling` keywords:
    max_new_tokens, temperature (0 = greedy), top_p, top_k, repetition_penalty, do_sample, seed.
    """
    from swiftlite.engine.generate import generate

    row, params, pairs = _prepare(model, template, query, history, system, images, audios, generation_config,
                                  stop_words, sampling, urls)
    result = generate(model, template, [row], [params], adapter_names=adapter_names)[0]
    return result.text, pairs + [[query, result.text]]


def inference_stream(model, template, query: str, history=None, system: str | None = None, images=None,
                     audios=None, generation_config=None, stop_words: list[str] | None = None,
                     adapter_names: list[str] | None = None, urls=None,
                     **sampling) -> Iterator[tuple[str, list[list[str]]]]:
    """Like `inference`, but yields (response so far, history with the partial turn) as tokens arrive.

    The last item holds the whole response. Stopping the iteration early cancels the generation.
    """
    # Encode eagerly, so that a bad image or history raises at the call, not at the first next().
    row, params, pairs = _prepare(model, template, query, history, system, images, audios, generation_config,
                                  stop_words, sampling, urls)
    return _stream(model, template, row, params, pairs, query, adapter_names)


def _stream(model, template, row, params, pairs, query, adapter_names):
    stream = StreamingGeneration(model, template, row, params, adapter_names)
    response = ""
    yielded = False
    for delta in stream:
        response += delta
        yielded = True
        yield response, pairs + [[query, response]]
    if not yielded:  # an empty reply still produces one item, so `for response, history in ...` binds them
        yield response, pairs + [[query, response]]
