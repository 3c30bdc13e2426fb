"""Encoding a Conversation into model inputs with the checkpoint's own chat template.

The official chat template is the judge of the prompt format. We render it, find the assistant spans by
comparing renders (the render of turns[:k] with the generation prompt must be a prefix of the render of
turns[:k+1], which must be a prefix of the whole render: otherwise we fail loudly rather than guess), tokenize
once with character offsets, put labels on the tokens of each assistant reply up to and including its
end-of-turn token, and finally expand each media placeholder token to the number of tokens the model's
processor would give it (the family's rule, in its template file).
"""

from __future__ import annotations

from typing import Any

from swiftlite.conversation import Conversation, validate_roles
from swiftlite.media import MediaPolicy, limit_image_pixels, load_audio, load_image
from swiftlite.prompt_parts import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, check_media_count
from swiftlite.templates.meta import TemplateMeta
from swiftlite.video import VIDEO_PLACEHOLDER

IGNORE_INDEX = -100


class TemplateError(ValueError):
    """The conversation cannot be encoded faithfully with this template."""


class Template:
    """A TemplateMeta bound to one checkpoint's tokenizer, processors and settings."""

    def __init__(
        self,
        meta: TemplateMeta,
        tokenizer,
        image_processor=None,
        feature_extractor=None,
        video_processor=None,
        processor_class: str | None = None,
        processor_config: dict | None = None,
        model_config: dict | None = None,
        chat_template: str | None = None,
        default_system: str | None = None,
        max_pixels: int | None = None,
        media_policy: MediaPolicy | None = None,
    ):
        self.meta = meta
        self.template_type = meta.name
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.feature_extractor = feature_extractor
        self.video_processor = video_processor
        self.processor_class = processor_class
        self._processor = None
        self.processor_config = processor_config or {}
        self.model_config = model_config or {}
        self.chat_template = (chat_template or meta.rendering.chat_template_override
                              or getattr(tokenizer, "chat_template", None) or meta.rendering.fallback_chat_template)
        self.default_system = default_system
        self.max_pixels = max_pixels
        self.media_policy = media_policy or MediaPolicy()

    # ---- token facts -------------------------------------------------------------------------------
    def token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise TemplateError(f"the tokenizer has no {token!r} token, which template {self.meta.name!r} needs")
        return token_id

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def stop_token_ids(self, generation_config=None) -> list[int]:
        ids: list[int] = []
        eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
        for value in (eos, self.tokenizer.eos_token_id):
            if value is None:
                continue
            ids += value if isinstance(value, (list, tuple)) else [value]
        if self.meta.end_of_turn:
            ids.append(self.token_id(self.meta.end_of_turn))
        ids += [self.token_id(token) for token in self.meta.rendering.stop_tokens]
        return sorted(set(ids))

    @property
    def stop_words(self) -> list[str]:
        words = [self.meta.end_of_turn] if self.meta.end_of_turn else []
        if self.tokenizer.eos_token:
            words.append(self.tokenizer.eos_token)
        words += self.meta.rendering.stop_tokens
        return list(dict.fromkeys(words))

    # ---- rendering ---------------------------------------------------------------------------------
    def _template_message(self, message: dict) -> dict:
        """Our placeholder text -> the content-parts list the official chat templates iterate over."""
        # An assistant's tool calls and a tool answer's id go to the chat template as they are.
        extra = {key: message[key] for key in ("tool_calls", "tool_call_id", "name") if key in message}
        if self.meta.rendering.string_content or message["role"] in self.meta.rendering.string_content_roles:
            return {"role": message["role"], "content": message["content"], **extra}
        parts: list[dict] = []
        text = message["content"]
        position = 0
        while position <= len(text):
            next_image = text.find(IMAGE_PLACEHOLDER, position)
            next_audio = text.find(AUDIO_PLACEHOLDER, position)
            next_video = text.find(VIDEO_PLACEHOLDER, position)
            candidates = [(i, kind) for i, kind in ((next_image, "image"), (next_audio, "audio"),
                                                    (next_video, "video")) if i >= 0]
            if not candidates:
                if text[position:]:
                    parts.append({"type": "text", "text": text[position:]})
                break
            index, kind = min(candidates)
            if text[position:index]:
                parts.append({"type": "text", "text": text[position:index]})
            # Audio parts also carry an 'audio' key: Qwen2-Audio's hub-era template recognises items by that key only.
            parts.append({"type": kind, "audio": AUDIO_PLACEHOLDER} if kind == "audio" else {"type": kind})
            placeholder = {"image": IMAGE_PLACEHOLDER, "audio": AUDIO_PLACEHOLDER}.get(kind, VIDEO_PLACEHOLDER)
            position = index + len(placeholder)
        if not parts:
            parts.append({"type": "text", "text": ""})
        return {"role": message["role"], "content": parts, **extra}

    def render(self, messages: list[dict], add_generation_prompt: bool, **chat_kwargs) -> str:
        if not self.chat_template:
            raise TemplateError(
                f"this checkpoint ships no chat template (template {self.meta.name!r} is for a base model): "
                "send a raw prompt to /v1/completions or use `mm infer` with a chat model"
            )
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **chat_kwargs,  # tools=..., continue_final_message=... (the server's tools and prefill)
        )

    def with_default_system(self, conversation: Conversation) -> Conversation:
        if self.default_system and conversation.system is None:
            messages = [{"role": "system", "content": self.default_system}] + conversation.messages
            return Conversation(messages, conversation.images, conversation.audios, tools=conversation.tools,
                                videos=conversation.videos)
        return conversation

    def assistant_spans(self, messages: list[dict], full: str, **chat_kwargs) -> list[tuple[int, int]]:
        """Character spans [start, end) of each assistant turn in `full`, found by comparing renders."""
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:index], add_generation_prompt=True, **chat_kwargs)
            through = self.render(messages[: index + 1], add_generation_prompt=False, **chat_kwargs)
            if full.startswith(through) and not through.startswith(before):
                # Some official templates write the assistant header in history differently from their own
                # generation prompt (LLaVA-OneVision's `assistant \n` vs `assistant\n`): find the reply by its
                # text inside the turn, so training still sees exactly the official render.
                start = self._reply_start(messages, index, through)
                if start is not None:
                    spans.append((start, len(through)))
                    continue
            if (self.meta.rendering.reply_ends_at_end_of_turn and full.startswith(before)
                    and not full.startswith(through)):
                # Some templates render the final assistant turn differently from earlier ones (Qwen3 gives only
                # the last reply an empty <think> block): in the whole render the reply starts where the
                # generation prompt ends and runs through its end-of-turn token.
                end = full.find(self.meta.end_of_turn, len(before))
                if end >= 0:
                    spans.append((len(before), end + len(self.meta.end_of_turn)))
                    continue
            if not through.startswith(before) or not full.startswith(through):
                raise TemplateError(
                    f"template {self.meta.name!r}: the chat template does not render turn {index} as a prefix of "
                    "the whole conversation, so the reply cannot be located for the loss. Please report this "
                    "checkpoint's chat template."
                )
            spans.append((len(before), len(through)))
        return spans

    def _reply_start(self, messages: list[dict], index: int, through: str) -> int | None:
        previous = self.render(messages[:index], add_generation_prompt=False)
        reply = "".join(part.get("text", "") for part in messages[index]["content"] if part["type"] == "text")
        if not reply or not through.startswith(previous):
            return None
        start = through.find(reply, len(previous))
        return start if start >= 0 else None

    # ---- encoding ----------------------------------------------------------------------------------
    def encode(self, conversation: Conversation, add_generation_prompt: bool | None = None) -> dict[str, Any]:
        """Conversation -> {input_ids, labels, attention_mask, <processor outputs>, <extra inputs>}.

        With `add_generation_prompt` (default: when the last turn is not the assistant's) the result is a
        prompt for generation; otherwise every assistant reply is labelled for the loss.
        """
        conversation = self.with_default_system(conversation)
        try:
            validate_roles(conversation)
        except ValueError as error:
            raise TemplateError(str(error)) from None
        if not self.meta.supports_multi_turn and sum(m["role"] == "user" for m in conversation.messages) > 1:
            raise TemplateError(f"template {self.meta.name!r} takes one user turn (no history)")
        if conversation.system is not None and not self.meta.supports_system:
            raise TemplateError(f"template {self.meta.name!r} has no system prompt")
        check_media_count(conversation.texts(), conversation.images, conversation.audios)
        num_videos = sum(text.count(VIDEO_PLACEHOLDER) for text in conversation.texts() if text)
        if num_videos != len(conversation.videos):
            raise TemplateError(f"{num_videos} {VIDEO_PLACEHOLDER} placeholders but {len(conversation.videos)} "
                                "videos were given")
        if conversation.videos and (self.video_processor is None or not self.meta.media.processor_call):
            from swiftlite.video import video_error

            raise TemplateError(video_error(f"template {self.meta.name!r}"))
        if self.meta.max_images is not None and len(conversation.images) > self.meta.max_images:
            raise TemplateError(
                f"template {self.meta.name!r} takes at most {self.meta.max_images} image(s), got {len(conversation.images)}"
            )
        if add_generation_prompt is None:
            add_generation_prompt = conversation.messages[-1]["role"] != "assistant"

        messages = [self._template_message(m) for m in conversation.messages]
        tools = {"tools": conversation.tools} if conversation.tools else {}  # agent rows (ms-swift's `tools`)
        full = self.render(messages, add_generation_prompt, **tools)
        spans = [] if add_generation_prompt else self.assistant_spans(messages, full, **tools)
        return self.encode_text(full, conversation.images, conversation.audios, spans, videos=conversation.videos)

    def encode_raw(self, prompt: str, images: list | None = None, audios: list | None = None) -> dict[str, Any]:
        """A raw completion prompt with `<image>`/`<audio>` placeholders (base models, /v1/completions)."""
        images, audios = list(images or []), list(audios or [])
        check_media_count(prompt, images, audios)
        if images and not self.meta.rendering.raw_image_text:
            raise TemplateError(f"template {self.meta.name!r} takes no images")
        if audios and not self.meta.rendering.raw_audio_text:
            raise TemplateError(f"template {self.meta.name!r} takes no audio")
        text = prompt.replace(IMAGE_PLACEHOLDER, self.meta.rendering.raw_image_text or IMAGE_PLACEHOLDER)
        text = text.replace(AUDIO_PLACEHOLDER, self.meta.rendering.raw_audio_text or AUDIO_PLACEHOLDER)
        if self.meta.rendering.raw_prompt:
            text = self.meta.rendering.raw_prompt(self, text)
        return self.encode_text(text, images, audios, [])

    def encode_text(self, text: str, images: list, audios: list, spans: list[tuple[int, int]],
                    videos: list | None = None) -> dict[str, Any]:
        if self.meta.media.processor_call:
            return self._encode_with_processor(text, images, audios, spans, videos or [])
        inline: dict = {}
        if self.meta.media.inline_media and (images or audios):
            text, spans, inline = self._inline_media(text, spans, {"image": list(images), "audio": list(audios)})
            images = [] if "image" in inline else images
            audios = [] if "audio" in inline else audios
        image_inputs = self.process_images(images) if images else {}
        if images and self.meta.media.expand_image_text:
            text, spans = self._expand_text(text, spans, image_inputs, len(images))
        encoded = self._tokenize(text)
        input_ids = list(encoded["input_ids"])
        labels = self._labels(text, input_ids, encoded["offset_mapping"], spans)
        if inline and self.meta.media.expand_inline:
            input_ids, labels = self.meta.media.expand_inline(self, input_ids, labels, inline)
        media_inputs: dict[str, Any] = {}
        if images:
            media_inputs.update(image_inputs)
            if not self.meta.media.expand_image_text:
                input_ids, labels = self._expand(input_ids, labels, self.meta.image_token, len(images),
                                                 lambda i: self.meta.media.num_image_tokens(self, media_inputs, i))
            for key in self.meta.media.unused_image_keys:
                media_inputs.pop(key, None)
        if audios:
            audio_inputs = self.process_audios(audios)
            media_inputs.update(audio_inputs)
            input_ids, labels = self._expand(input_ids, labels, self.meta.audio_token, len(audios),
                                             lambda i: self.meta.media.num_audio_tokens(self, audio_inputs, i))
        row: dict[str, Any] = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}
        if spans:
            row["labels"] = labels
        row.update(media_inputs)
        if self.meta.media.extra_inputs:
            row.update(self.meta.media.extra_inputs(self, input_ids))
        if self.meta.media.row_inputs:
            row.update(self.meta.media.row_inputs(self, row))
        return row

    @property
    def processor(self):
        """The checkpoint's official processor (built once, from the parts loaded with the tokenizer)."""
        if self._processor is None:
            from swiftlite.models.processors import build_processor

            if self.image_processor is None and self.feature_extractor is None:
                raise TemplateError(f"template {self.meta.name!r} has no processor loaded for this checkpoint")
            settings = dict(self.meta.media.processor_defaults(self)) if self.meta.media.processor_defaults else {}
            settings.update(self.processor_config)
            loaded = getattr(self.tokenizer, "swiftlite_processors", None)
            processor_class = self.processor_class or getattr(loaded, "processor_class", None)
            self._processor = build_processor(processor_class, self.tokenizer, settings,
                                              image_processor=self.image_processor,
                                              feature_extractor=self.feature_extractor,
                                              video_processor=self.video_processor)
        return self._processor

    def _encode_with_processor(self, text: str, images: list, audios: list, spans, videos: list) -> dict[str, Any]:
        """The official processor's __call__ on the rendered text; labels carried over from our tokenization."""
        if images and (self.image_processor is None or not self.meta.image_token):
            raise TemplateError(f"template {self.meta.name!r} takes no images")
        if audios and (self.feature_extractor is None or not self.meta.audio_token):
            raise TemplateError(f"template {self.meta.name!r} takes no audio")
        encoded = self._tokenize(text)
        rendered_ids = list(encoded["input_ids"])
        labels, insert_eos_after = self._label_tokens(text, rendered_ids, encoded["offset_mapping"], spans)
        media: dict[str, Any] = {}
        if images:
            media["images"] = self.load_images(images)
        if audios:
            rate = getattr(self.feature_extractor, "sampling_rate", 16000)
            media["audio"] = [load_audio(source, self.media_policy, sampling_rate=rate) for source in audios]
        if videos:
            # Decoded and sampled here, under bounds (swiftlite/video.py); the processor must not resample them.
            from swiftlite.video import load_video

            clips = [load_video(source, self.media_policy) for source in videos]
            media["videos"] = [frames for frames, _ in clips]
            media["video_metadata"] = [metadata for _, metadata in clips]
            media["do_sample_frames"] = False
        if self.meta.media.processor_kwargs:
            media.update(self.meta.media.processor_kwargs(self))
        outputs = self.processor(text=[text], return_tensors="pt",
                                 add_special_tokens=self.meta.rendering.add_special_tokens, **media)
        input_ids = outputs["input_ids"][0].tolist()
        labels, moved = self._carry_labels(rendered_ids, labels, input_ids)
        sequences = {key: outputs[key][0].tolist() for key in self.meta.collation.sequence_keys if key in outputs}
        positions = {key: outputs[key] for key in self.meta.media.position_tensors if key in outputs}
        eos_id = self.tokenizer.eos_token_id
        for index in sorted((moved[i] for i in insert_eos_after), reverse=True):
            input_ids.insert(index + 1, eos_id)
            labels.insert(index + 1, eos_id)
            for key, values in sequences.items():
                values.insert(index + 1, self.meta.collation.sequence_keys[key])
            for key, tensor in positions.items():  # the eos repeats the position of the reply's last token
                positions[key] = tensor[:, [*range(index + 1), index, *range(index + 1, tensor.shape[1])]]
        row: dict[str, Any] = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}
        if spans:
            row["labels"] = labels
        row.update(sequences)
        skipped = {"input_ids", "attention_mask", *self.meta.collation.sequence_keys,
                   *self.meta.media.unused_image_keys}
        row.update({key: value for key, value in outputs.items() if key not in skipped and value is not None})
        row.update(positions)
        if self.meta.media.row_inputs:
            row.update(self.meta.media.row_inputs(self, row))
        return row

    def _tokenize(self, text: str):
        return self.tokenizer(text, add_special_tokens=self.meta.rendering.add_special_tokens,
                              return_offsets_mapping=True)

    def _carry_labels(self, rendered_ids: list[int], labels: list[int], input_ids: list[int]):
        """Labels on the processor's tokens: the processor only rewrites the media placeholders, so aligning its
        tokens with the render's carries each labelled token over. A labelled token the processor changed means
        the two disagree about the reply: fail loudly rather than train on the wrong tokens.

        Returns the new labels and, for each rendered token, its index in `input_ids` (None where rewritten)."""
        import difflib

        new_labels = [IGNORE_INDEX] * len(input_ids)
        moved: list[int | None] = [None] * len(rendered_ids)
        matcher = difflib.SequenceMatcher(None, rendered_ids, input_ids, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                for offset in range(i2 - i1):
                    new_labels[j1 + offset] = labels[i1 + offset]
                    moved[i1 + offset] = j1 + offset
            elif any(label != IGNORE_INDEX for label in labels[i1:i2]):
                raise TemplateError(
                    f"template {self.meta.name!r}: the official processor changed tokens of an assistant reply "
                    "(not only the media placeholders), so the reply cannot be located for the loss. Please report "
                    "this checkpoint's processor."
                )
        return new_labels, moved

    def _labels(self, text, input_ids, offsets, spans) -> list[int]:
        labels, insert_eos_after = self._label_tokens(text, input_ids, offsets, spans)
        eos_id = self.tokenizer.eos_token_id
        for index in reversed(insert_eos_after):
            input_ids.insert(index + 1, eos_id)
            labels.insert(index + 1, eos_id)
        return labels

    def _label_tokens(self, text, input_ids, offsets, spans) -> tuple[list[int], list[int]]:
        """Labels on the tokens of each assistant span, and the token indices after which an eos must be
        inserted (replies the official template closes with no end-of-turn token)."""
        labels = [IGNORE_INDEX] * len(input_ids)
        if not spans:
            return labels, []
        insert_eos_after: list[int] = []
        for start, end in spans:
            reply = text[start:end]
            if self.meta.end_of_turn and self.meta.end_of_turn in reply:
                # Train on the reply and its end-of-turn token; what follows (a newline) belongs to the next turn.
                end = start + reply.rfind(self.meta.end_of_turn) + len(self.meta.end_of_turn)
                needs_eos = False
            else:
                needs_eos = True
            last = None
            for index, (token_start, token_end) in enumerate(offsets):
                if start <= token_start < end and token_end > token_start:
                    labels[index] = input_ids[index]
                    last = index
            if last is None:
                raise TemplateError("an assistant reply is empty after tokenization")
            if needs_eos:
                insert_eos_after.append(last)
        return labels, insert_eos_after

    def _inline_media(self, text, spans, media: dict):
        """Write each inline-media placeholder's source into the rendered text (meta.media.inline_media formats);
        assistant spans after a placeholder move by the growth of the text before them."""
        placeholders = {"image": IMAGE_PLACEHOLDER, "audio": AUDIO_PLACEHOLDER}
        inline = {kind: media[kind] for kind in self.meta.media.inline_media if media.get(kind)}
        replacements = []  # (position, placeholder length, replacement)
        for kind, sources in inline.items():
            for source in sources:
                if not isinstance(source, str):
                    raise TemplateError(f"template {self.meta.name!r} writes each {kind} into the prompt as a path "
                                        f"or URL, so {kind}s must be given as paths or URLs, not decoded data")
            token = placeholders[kind]
            positions = [i for i in range(len(text)) if text.startswith(token, i)]
            if len(positions) != len(sources):
                raise TemplateError(f"the prompt holds {len(positions)} {token} placeholders but {len(sources)} {kind}s were given")
            for position, source in zip(positions, sources):
                replacements.append((position, len(token), self.meta.media.inline_media[kind].format(source=source)))
        replacements.sort()
        pieces, previous = [], 0
        for position, length, replacement in replacements:
            pieces += [text[previous:position], replacement]
            previous = position + length

        def moved(offset):
            return offset + sum(len(r) - length for position, length, r in replacements if position < offset)

        return "".join(pieces) + text[previous:], [(moved(s), moved(e)) for s, e in spans], inline

    def _expand_text(self, text, spans, image_inputs, count):
        """Substitute each image placeholder in the rendered text, as the official processor does before
        tokenizing; assistant spans after a placeholder move by the growth of the text before them."""
        token = self.meta.image_token
        positions, start = [], text.find(token)
        while start >= 0:
            positions.append(start)
            start = text.find(token, start + len(token))
        if len(positions) != count:
            raise TemplateError(f"the prompt holds {len(positions)} {token} placeholders but {count} images were given")
        pieces, growth, previous = [], [], 0
        for index, position in enumerate(positions):
            replacement = self.meta.media.expand_image_text(self, image_inputs, index)
            pieces += [text[previous:position], replacement]
            growth.append((position, len(replacement) - len(token)))
            previous = position + len(token)
        pieces.append(text[previous:])

        def moved(offset):
            return offset + sum(delta for position, delta in growth if position < offset)

        return "".join(pieces), [(moved(s), moved(e)) for s, e in spans]

    def _expand(self, input_ids, labels, token, count, tokens_for):
        token_id = self.token_id(token)
        positions = [i for i, t in enumerate(input_ids) if t == token_id]
        if len(positions) != count:
            raise TemplateError(
                f"the prompt holds {len(positions)} {token} tokens but {count} media items were given"
            )
        new_ids, new_labels, previous = [], [], 0
        for media_index, position in enumerate(positions):
            new_ids += input_ids[previous:position] + [token_id] * int(tokens_for(media_index))
            new_labels += labels[previous:position] + [IGNORE_INDEX] * int(tokens_for(media_index))
            previous = position + 1
        return new_ids + input_ids[previous:], new_labels + labels[previous:]

    # ---- media -------------------------------------------------------------------------------------
    def load_images(self, images: list) -> list:
        # Downscaled one by one, so that only one full-size bitmap is alive at a time.
        return [limit_image_pixels(load_image(source, self.media_policy), self.max_pixels) for source in images]

    def process_images(self, images: list) -> dict:
        # image_processor_call may do the official preprocessing itself (InternVL2's model-card tiling).
        if (self.image_processor is None and not self.meta.media.image_processor_call) or not self.meta.image_token:
            raise TemplateError(f"template {self.meta.name!r} takes no images")
        if self.meta.media.image_processor_call:
            outputs = self.meta.media.image_processor_call(self, self.load_images(images))
        else:
            outputs = self.image_processor(images=self.load_images(images), return_tensors="pt")
        return {key: value for key, value in outputs.items() if value is not None}

    def process_audios(self, audios: list) -> dict:
        if self.feature_extractor is None or not self.meta.audio_token:
            raise TemplateError(f"template {self.meta.name!r} takes no audio")
        rate = getattr(self.feature_extractor, "sampling_rate", 16000)
        arrays = [load_audio(source, self.media_policy, sampling_rate=rate) for source in audios]
        outputs = self.feature_extractor(arrays, sampling_rate=rate, return_attention_mask=True,
                                         padding="max_length", return_tensors="pt")
        return {"input_features": outputs["input_features"], "feature_attention_mask": outputs["attention_mask"]}

    # ---- batching ----------------------------------------------------------------------------------
    def collate(self, rows: list[dict], padding_side: str = "right", pad_to_multiple_of: int | None = None) -> dict:
        """Pad a list of encoded rows into one batch of tensors (left padding for generation)."""
        import torch

        longest = max(len(row["input_ids"]) for row in rows)
        if pad_to_multiple_of:
            longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
        sequence_pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        sequence_pads.update(self.meta.collation.sequence_keys)
        batch: dict[str, Any] = {}
        for key, pad_value in sequence_pads.items():
            if key not in rows[0]:
                continue
            padded = []
            for row in rows:
                values = list(row[key])
                padding = [pad_value] * (longest - len(values))
                padded.append(padding + values if padding_side == "left" else values + padding)
            batch[key] = torch.tensor(padded, dtype=torch.long)
        if self.meta.collation.collate_rows:
            batch.update(self.meta.collation.collate_rows(self, rows, padding_side, longest))
        for key in rows[0].keys() | set().union(*(row.keys() for row in rows)):
            if key in batch or key in sequence_pads:
                continue
            tensors = [row[key] for row in rows if key in row]
            batched = self.meta.collation.collate_media(key, tensors) if self.meta.collation.collate_media else None
            batch[key] = torch.cat(tensors, dim=0) if batched is None else batched
        return batch
