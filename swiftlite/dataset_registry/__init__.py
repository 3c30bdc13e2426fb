"""Named datasets: `--dataset coco-en-mini` instead of a file (plain data, like the model registry).

Each entry says where the set lives on ModelScope and on the Hugging Face Hub, which splits make it up and
how its rows become conversations (swiftlite/dataset_registry/preprocess.py). Reading a named set
(swiftlite/dataset_registry/sources.py) looks for a local copy first (`$SWIFTLITE_DATASETS_DIR/<name>/`),
then downloads through ModelScope's MsDataset (default) or `datasets` (`--use_hf true` / USE_HF=1).
`mm list datasets` prints this table. Only the stdlib and the preprocessing functions are imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from swiftlite.dataset_registry import preprocess


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    task: str  # caption | vqa | ocr-vqa | grounding | asr | instruction
    modalities: str  # what the rows hold besides text: image, audio, text
    modelscope_id: str | None
    hf_id: str | None  # None: not registered on the Hugging Face Hub (use ModelScope or a local copy)
    splits: tuple[str, ...]  # the hub splits that make up this named set, concatenated in this order
    preprocess: Callable[[dict, str, str | None], dict]  # (row, subset, base_dir) -> a dataset_formats record
    rows: int  # rows in the ModelScope copy's splits (the Hugging Face copy may differ: see notes)
    licence: str
    subsets: tuple[str, ...] = ("default",)  # `NAME:subset`; the first is used when none is named
    ms_subset: str | None = None  # ModelScope's subset name for MsDataset.load (None: its default)
    hf_subset: str | None = None  # the Hugging Face config name for datasets.load_dataset (None: its default)
    notes: str = ""


ENTRIES = [
    DatasetEntry(
        "coco-en", "caption", "image", "modelscope/coco_2014_caption", "yerevann/coco-karpathy",
        ("train", "validation"), preprocess.caption, 454_617, "CC BY 4.0 (captions); images: Flickr terms",
        ms_subset="coco_2014_caption",
        notes="COCO 2014 captions, first caption per row; HF copy: Karpathy splits, images fetched by URL",
    ),
    DatasetEntry(
        "coco-en-mini", "caption", "image", "modelscope/coco_2014_caption", "yerevann/coco-karpathy",
        ("validation",), preprocess.caption, 40_504, "CC BY 4.0 (captions); images: Flickr terms",
        ms_subset="coco_2014_caption",
        notes="coco-en's validation split (ms-swift's coco-en-mini); HF copy: 5,000 Karpathy validation rows",
    ),
    DatasetEntry(
        "okvqa", "vqa", "image", "swift/OK-VQA_train", "Multimodal-Fatima/OK-VQA_train",
        ("train",), preprocess.vqa, 9_009, "unstated (research use); COCO images",
        notes="outside-knowledge VQA; the most common of the ten answers",
    ),
    DatasetEntry(
        "ocr-vqa", "ocr-vqa", "image", "swift/OCR-VQA", "howard-hou/OCR-VQA",
        ("train",), preprocess.ocr_vqa, 166_022, "unstated (research use); book covers",
        notes="questions about book covers (title, author, genre); all pairs of an image in one multi-turn row",
    ),
    DatasetEntry(
        "refcoco", "grounding", "image", "swift/refcoco", "jxu124/refcoco",
        ("train",), preprocess.refcoco, 42_404, "Apache-2.0 (annotations); COCO images",
        subsets=("grounding", "caption"),
        notes="<ref>/<box> targets on a 0-1000 scale; refcoco:caption describes a box instead",
    ),
    DatasetEntry(
        "aishell1-zh", "asr", "audio", "speech_asr/speech_asr_aishell1_trainsets", None,
        ("train", "validation", "test"), preprocess.asr, 141_600, "Apache-2.0",
        notes="Mandarin speech recognition for Qwen2-Audio (ModelScope only)",
    ),
    DatasetEntry(
        "aishell1-zh-mini", "asr", "audio", "speech_asr/speech_asr_aishell1_trainsets", None,
        ("validation", "test"), preprocess.asr, 21_502, "Apache-2.0",
        notes="aishell1-zh's validation and test splits (ms-swift's aishell1-zh-mini)",
    ),
    DatasetEntry(
        "alpaca-en", "instruction", "text", "AI-ModelScope/alpaca-gpt4-data-en", "vicgalle/alpaca-gpt4",
        ("train",), preprocess.alpaca, 52_002, "CC BY-NC 4.0",
        notes="Alpaca instructions answered by GPT-4 (text only)",
    ),
]
DATASETS: dict[str, DatasetEntry] = {entry.name: entry for entry in ENTRIES}


def normalise_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def find_named_dataset(spec: str) -> tuple[DatasetEntry, str] | None:
    """'coco-en-mini' or 'refcoco:caption' -> (entry, subset); None when `spec` is not a registered name.

    A sample suffix (#N) must already be removed (data.parse_spec). An unknown subset is a UserError.
    """
    name, _, subset = spec.partition(":")
    entry = DATASETS.get(normalise_name(name))
    if entry is None:
        return None
    if not subset:
        return entry, entry.subsets[0]
    if subset not in entry.subsets:
        from swiftlite.errors import UserError

        raise UserError(f"--dataset {spec}: {entry.name} has no subset {subset!r} "
                        f"(subsets: {', '.join(entry.subsets)})")
    return entry, subset
