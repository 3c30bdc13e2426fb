"""A /v1/completions body -> ParsedRequest holding RawPrompts (text with media, or token ids), checked field by
field."""

from __future__ import annotations

from swiftlite.media import MediaError
from swiftlite.prompt_parts import (
    AUDIO_PLACEHOLDER,
    IMAGE_PLACEHOLDER,
    URL_PLACEHOLDER,
    bind_url_placeholders,
    extract_media_tags,
)
from swiftlite.server.errors import bad_request
from swiftlite.server.fields import (
    COMPLETION_FIELDS,
    boolean_field,
    check_known_fields,
    check_media_limits,
    integer_field,
    string_list_field,
)
from swiftlite.server.protocol import ParsedRequest, RawPrompt, RequestLimits
from swiftlite.server.sampling_fields import common_fields


def parse_completion_request(body, limits: RequestLimits) -> ParsedRequest:
    check_known_fields(body, COMPLETION_FIELDS, "completion")
    common = common_fields(body, limits)
    best_of = integer_field(body, "best_of", minimum=1)
    if best_of is not None and best_of < common["n"]:
        raise bad_request(f"'best_of' ({best_of}) must be at least n ({common['n']})", param="best_of")
    if best_of is not None and best_of > common["n"] and common["stream"]:
        raise bad_request("'best_of' greater than n cannot be streamed", param="best_of")
    top_logprobs = integer_field(body, "logprobs", minimum=0, maximum=20)  # OpenAI's is 5; vLLM's default cap is 20
    echo = bool(boolean_field(body, "echo"))

    prompt = body.get("prompt")
    token_prompts = None
    if isinstance(prompt, str):
        texts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(item, str) for item in prompt):
        texts = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(item, int) and not isinstance(item, bool)
                                                     for item in prompt):
        token_prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
            for item in prompt):
        token_prompts = prompt
    else:
        raise bad_request("'prompt' must be a string, a non-empty list of strings, a list of token ids or a list "
                          "of non-empty lists of token ids", param="prompt")
    if string_list_field(body, "videos"):
        raise bad_request("'videos' is taken by /v1/chat/completions only", param="videos")
    if token_prompts is not None:
        if string_list_field(body, "images") or string_list_field(body, "audios"):
            raise bad_request("token-id prompts take no 'images'/'audios'", param="prompt")
        texts = []
    extra_images, extra_audios = string_list_field(body, "images"), string_list_field(body, "audios")
    if (extra_images or extra_audios) and len(texts) > 1:
        raise bad_request("'images'/'audios' need a single prompt: with several, put <img>...</img> tags in each",
                          param="images")
    per_prompt = max(common["n"], best_of or 0)
    count = len(token_prompts) if token_prompts is not None else len(texts)
    if count * per_prompt > limits.max_batch_size:
        raise bad_request(f"{count} prompts x {'best_of' if per_prompt > common['n'] else 'n'}={per_prompt} is "
                          f"more than this server batches together (--max_batch_size {limits.max_batch_size})",
                          param="prompt")
    prompts = [RawPrompt("", token_ids=list(ids)) for ids in token_prompts or []]
    for index, text in enumerate(texts):
        try:
            if URL_PLACEHOLDER in text:  # rtp-llm: `images` go where the <img/> placeholders are
                text, extra_images = bind_url_placeholders([text], extra_images)[0], []
            text, images, audios = extract_media_tags(text)
        except MediaError as error:
            raise bad_request(f"prompt: {error}", param="prompt", code="invalid_content") from None
        images, audios = images + extra_images, audios + extra_audios
        # Media without placeholders go first, as in a chat turn.
        if extra_images and IMAGE_PLACEHOLDER not in text:
            text = IMAGE_PLACEHOLDER * len(images) + text
        if extra_audios and AUDIO_PLACEHOLDER not in text:
            text = AUDIO_PLACEHOLDER * len(audios) + text
        check_media_limits(images, audios, limits, "prompt")
        prompts.append(RawPrompt(text, images, audios))

    # best_of ranks its candidates by their mean token logprob, so they record logprobs even when not asked.
    wants_logprobs = top_logprobs is not None or per_prompt > common["n"]
    common["sampling"].update(logprobs=wants_logprobs, top_logprobs=top_logprobs or 0)
    if echo and top_logprobs is not None:
        common["sampling"]["prompt_logprobs"] = top_logprobs
    return ParsedRequest("completion", common["model"], prompts, common["sampling"], common["max_tokens"],
                         common["n"], common["stream"], common["include_usage"], top_logprobs is not None,
                         top_logprobs or 0, echo=echo, best_of=best_of, json_schema=common["json_schema"],
                         json_mode=common["json_mode"])
