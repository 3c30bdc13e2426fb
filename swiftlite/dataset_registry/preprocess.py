"""Row preprocessing for named datasets: one hub row (in its own schema) -> one swiftlite dataset record.

Each function takes the row as the hub stores it (a dict of columns), the chosen subset and the folder that
relative media paths resolve against (a local copy's folder, else None), and returns a record in one of the
formats swiftlite/dataset_formats.py reads (`messages` + `images`/`audios`, or alpaca's instruction/output),
which then checks and normalises it like a row of a file. A row that cannot be used raises RowError (the caller adds
`source:row` and skips it under `--strict false`).

Media stay as the set stores them: image bytes (HF's Image feature {"bytes", "path"}), a path, or a URL.
Nothing is fetched here: media.load_image reads or fetches an image when the row is encoded.
"""

from __future__ import annotations

import json
import os
from collections import Counter

from swiftlite.dataset_readers import RowError

CAPTION_PROMPT = "please describe the image."  # ms-swift's coco-en prompt
ASR_PROMPT = "语音转文本"  # ms-swift's aishell1 prompt ("speech to text")
GROUNDING_PROMPT = "Locate <ref>{ref}</ref> in the image."
REGION_CAPTION_PROMPT = "Describe the region <box>{box}</box> in the image."


def column(row: dict, *names: str):
    """The first of `names` that the row holds (not None), else a RowError naming what was expected."""
    for name in names:
        if row.get(name) is not None:
            return row[name]
    found = ", ".join(sorted(row)) or "none"
    raise RowError(f"column {' or '.join(repr(n) for n in names)} is missing (columns: {found})")


def media_value(value, what: str = "image"):
    """An HF Image/Audio feature value {"bytes", "path"} -> its bytes (or its path); paths and URLs as they are."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return value["path"]
        raise RowError(f"the {what} column holds neither bytes nor a path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    if hasattr(value, "getpixel"):
        return value  # a decoded PIL image (a dataset loaded with decoding on)
    raise RowError(f"the {what} column is empty")


def chat(user: str, assistant: str, images: list | None = None, audios: list | None = None) -> dict:
    record = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}
    if images:
        record["images"] = images
    if audios:
        record["audios"] = audios
    return record


# ---- captions --------------------------------------------------------------------------------------------
def caption(row: dict, subset: str, base_dir: str | None) -> dict:
    """COCO captions: "describe the image" -> the caption.

    ModelScope modelscope/coco_2014_caption: image (Image), caption (str; several captions joined by "&&", of
    which ms-swift keeps the first), image_id. Hugging Face yerevann/coco-karpathy: url (str), sentences
    (list[str]), filepath, filename, cocoid: the image stays a URL, fetched when the row is encoded.
    """
    if "caption" in row:
        text = str(column(row, "caption")).split("&&")[0].strip()
        image = media_value(column(row, "image"))
    else:
        sentences = column(row, "sentences")
        text = (sentences[0] if isinstance(sentences, list) and sentences else str(sentences or "")).strip()
        image = media_value(column(row, "url", "image"))
    if not text:
        raise RowError("the caption is empty")
    return chat(f"<image>{CAPTION_PROMPT}", text, images=[image])


# ---- visual question answering ---------------------------------------------------------------------------
def vqa(row: dict, subset: str, base_dir: str | None) -> dict:
    """OK-VQA (and VQAv2-style sets): question -> the answer most annotators gave.

    Columns: image (Image), question (str), answers (list[str], ten annotators; VQAv2 style lists of
    {"answer": ...} also work). ms-swift draws a random answer; the most common one is the same every run.
    """
    question = str(column(row, "question")).strip()
    answers = column(row, "answers", "answer")
    if isinstance(answers, str):
        answers = [answers]
    answers = [a.get("answer") if isinstance(a, dict) else a for a in answers or []]
    answers = [str(a).strip() for a in answers if a is not None and str(a).strip()]
    if not question or not answers:
        raise RowError("the question or its answers are empty")
    answer = Counter(answers).most_common(1)[0][0]  # ties: the first given (Counter keeps insertion order)
    return chat(f"<image>{question}", answer, images=[media_value(column(row, "image"))])


def ocr_vqa(row: dict, subset: str, base_dir: str | None) -> dict:
    """OCR-VQA (book covers): every question about the image, one turn each.

    Columns: image (Image; some copies only image_url), questions (list[str]), answers (list[str], same
    length), title, authorName, genre, ... ms-swift picks one random pair; all pairs make a multi-turn row.
    """
    questions, answers = column(row, "questions"), column(row, "answers")
    if not isinstance(questions, list) or not isinstance(answers, list) or len(questions) != len(answers):
        raise RowError("'questions' and 'answers' must be lists of the same length")
    pairs = [(str(q).strip(), str(a).strip()) for q, a in zip(questions, answers) if str(q).strip() and str(a).strip()]
    if not pairs:
        raise RowError("no question/answer pair")
    image = media_value(column(row, "image", "image_url"))
    messages = []
    for index, (question, answer) in enumerate(pairs):
        messages += [{"role": "user", "content": ("<image>" if index == 0 else "") + question},
                     {"role": "assistant", "content": answer}]
    return {"messages": messages, "images": [image]}


# ---- grounding -------------------------------------------------------------------------------------------
def refcoco(row: dict, subset: str, base_dir: str | None) -> dict:
    """RefCOCO (jxu124/refcoco, swift/refcoco): a referring expression and its box.

    Columns: image_path ("coco/train2014/COCO_train2014_....jpg"), bbox ([x1, y1, x2, y2] in pixels),
    captions (list[str]), raw_image_info (JSON text with width, height, coco_url), ... Boxes are written
    the Qwen-VL way, `<ref>text</ref><box>(x1,y1),(x2,y2)</box>` on a 0-1000 scale of the image.
    Subset "grounding" (default): expression -> box; "caption": box -> expression.
    The image is the local copy's file when it holds one (image column, or image_path under its folder),
    else the COCO URL from raw_image_info (fetched when the row is encoded).
    """
    captions = column(row, "captions", "sentences")
    if isinstance(captions, list):
        captions = [c.get("raw", c.get("sent")) if isinstance(c, dict) else c for c in captions]
        ref = str(captions[0]).strip() if captions else ""
    else:
        ref = str(captions).strip()
    if not ref:
        raise RowError("the referring expression is empty")
    info = row.get("raw_image_info") or {}
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError:
            raise RowError("'raw_image_info' is not valid JSON") from None
    width, height = row.get("width") or info.get("width"), row.get("height") or info.get("height")
    if not width or not height:
        raise RowError("no image width/height (raw_image_info) to put the box on the 0-1000 scale")
    bbox = column(row, "bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise RowError(f"'bbox' must be [x1, y1, x2, y2], got {bbox!r}")
    x1, y1, x2, y2 = (float(value) for value in bbox)
    scaled = [round(x1 * 1000 / width), round(y1 * 1000 / height), round(x2 * 1000 / width), round(y2 * 1000 / height)]
    box = "({},{}),({},{})".format(*(min(999, max(0, value)) for value in scaled))
    image = _refcoco_image(row, info, base_dir)
    if subset == "caption":
        return chat("<image>" + REGION_CAPTION_PROMPT.format(box=box), ref, images=[image])
    return chat("<image>" + GROUNDING_PROMPT.format(ref=ref), f"<ref>{ref}</ref><box>{box}</box>", images=[image])


def _refcoco_image(row: dict, info: dict, base_dir: str | None):
    if row.get("image") is not None:
        return media_value(row["image"])
    image_path = row.get("image_path") or row.get("file_name") or ""
    if base_dir and image_path:
        for candidate in (image_path, image_path.replace("coco/", "", 1), os.path.basename(image_path)):
            local = os.path.join(base_dir, candidate)
            if os.path.isfile(local):
                return local
    if info.get("coco_url"):
        return info["coco_url"]
    raise RowError(f"image {image_path or '?'} is not in the local copy and the row has no coco_url")


# ---- audio -----------------------------------------------------------------------------------------------
def asr(row: dict, subset: str, base_dir: str | None) -> dict:
    """AISHELL-1 (speech_asr/speech_asr_aishell1_trainsets): "speech to text" -> the transcript.

    Columns: "Audio:FILE" (path of a 16 kHz wav), "Text:LABEL" (space-separated characters; ms-swift removes
    the spaces). HF-style copies with audio ({"bytes", "path"}) and text/sentence columns work too.
    """
    audio = media_value(column(row, "Audio:FILE", "audio"), "audio")
    text = str(column(row, "Text:LABEL", "text", "sentence", "transcription")).replace(" ", "").strip()
    if not text:
        raise RowError("the transcript is empty")
    return chat(f"<audio>{ASR_PROMPT}", text, audios=[audio])


# ---- text ------------------------------------------------------------------------------------------------
def alpaca(row: dict, subset: str, base_dir: str | None) -> dict:
    """Alpaca-style instruction sets: instruction, input (may be empty), output (extra columns ignored)."""
    record = {"instruction": column(row, "instruction"), "input": row.get("input") or "",
              "output": column(row, "output")}
    if not str(record["output"]).strip():
        raise RowError("the output is empty")
    return record
