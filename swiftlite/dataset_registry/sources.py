"""Where a named dataset's rows come from: a local copy, the ModelScope cache/hub, or the Hugging Face cache/hub.

Order: (1) a local copy, `$SWIFTLITE_DATASETS_DIR/<name>/` (or `.../<hub owner>/<hub name>/`, so one copy of
modelscope/coco_2014_caption serves coco-en and coco-en-mini), holding the set's own files (.parquet, .jsonl,
.json, .csv; HF's Image feature as {"bytes", "path"} or plain paths) — files whose name or folder starts with
a split name ("validation-00000-of-00001.parquet", "data/train.jsonl", "test/part0.parquet") belong to that
split, and a folder with no split names is one split; (2) the hub: ModelScope's MsDataset by default, the
Hugging Face Hub through `datasets.load_dataset` with `--use_hf true` / USE_HF=1, each with its cache and
progress bars (HF_HUB_OFFLINE=1 reads the `datasets` cache only). Neither reachable nor cached: one line
that says what to download and where, or which file to pass instead.

`#N` is applied here, to row indices, so that only the sampled rows are converted (and their images read).
"""

from __future__ import annotations

import os
from pathlib import Path

from swiftlite.dataset_readers import RowError, materialise, read_file, sampled_indices
from swiftlite.errors import UserError
from swiftlite.hub_env import hf_hub_reachable, hf_offline, modelscope_reachable

DATASETS_DIR_ENV = "SWIFTLITE_DATASETS_DIR"
TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")
SPLIT_WORDS = {"train", "validation", "valid", "val", "dev", "test"}


def read_named(entry, subset: str, sample: int | None, seed: int, use_hf: bool) -> tuple[list, str | None]:
    """[(source, record or RowError)] for a registered set, and the folder media paths resolve against."""
    local = local_copy(entry)
    if local is not None:
        raw, base_dir = read_local_copy(entry, local, sample, seed)
    elif use_hf:
        raw, base_dir = read_hf(entry, sample, seed)
    else:
        raw, base_dir = read_modelscope(entry, sample, seed)
    return [(source, convert(entry, subset, row, base_dir)) for source, row in raw], base_dir


def convert(entry, subset: str, row, base_dir: str | None):
    if isinstance(row, RowError):
        return row
    if not isinstance(row, dict):
        return RowError(f"expected a row of columns, got {type(row).__name__}")
    try:
        return entry.preprocess(row, subset, base_dir)
    except RowError as error:
        return RowError(f"{entry.name}: {error}")


# ---- local copies ----------------------------------------------------------------------------------------
def local_copy(entry) -> Path | None:
    root = os.environ.get(DATASETS_DIR_ENV)
    if not root:
        return None
    for relative in (entry.name, entry.modelscope_id, entry.hf_id):
        if relative and (Path(root).expanduser() / relative).is_dir():
            return Path(root).expanduser() / relative
    return None


def split_files(entry, folder: Path) -> list[tuple[str, Path]]:
    """[(split, file)] of the copy's table files that belong to the entry's splits, in split order."""
    files = sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES
                   and not any(part.startswith(".") for part in path.relative_to(folder).parts))
    if not files:
        raise UserError(f"--dataset {entry.name}: the local copy {folder} holds no .parquet/.jsonl/.json/.csv files")

    def split_of(path: Path) -> str | None:
        for part in path.relative_to(folder).parts:
            word = part.split(".")[0].split("-")[0].split("_")[0].lower()
            if word in SPLIT_WORDS or word in entry.splits:
                return {"valid": "validation", "val": "validation", "dev": "validation"}.get(word, word)
        return None

    named = [(split_of(path), path) for path in files]
    if all(split is None for split, _ in named):
        return [(entry.splits[0], path) for path in files]  # a copy of just this set's rows
    chosen = [(split, path) for wanted in entry.splits for split, path in named if split == wanted]
    if not chosen:
        found = ", ".join(sorted({split for split, _ in named if split}))
        raise UserError(f"--dataset {entry.name}: the local copy {folder} has no {'/'.join(entry.splits)} files "
                        f"(found splits: {found})")
    return chosen


def read_local_copy(entry, folder: Path, sample: int | None, seed: int) -> tuple[list, str]:
    rows: list = []  # parquet rows stay unconverted (ParquetRow) until sampled
    for _, path in split_files(entry, folder):
        rows += read_file(path, str(path))
    picked = [rows[index] for index in sampled_indices(len(rows), sample, seed)]
    return [(source, materialise(row)) for source, row in picked], str(folder)


# ---- hubs ------------------------------------------------------------------------------------------------
def not_available(entry, why: str) -> UserError:
    """The one-line error for a set that is neither copied locally nor cached, and cannot be downloaded."""
    hf = (f"; or the Hugging Face copy: `huggingface-cli download --repo-type dataset {entry.hf_id} "
          f"--local-dir DIR/{entry.name}`") if entry.hf_id else ""
    return UserError(
        f"--dataset {entry.name}: {why}. Download it where there is network (`modelscope download --dataset "
        f"{entry.modelscope_id} --local_dir DIR/{entry.name}`{hf}) and set {DATASETS_DIR_ENV}=DIR, "
        f"or pass a local .jsonl/.json/.csv file instead"
    )


def read_hf(entry, sample: int | None, seed: int) -> tuple[list, None]:
    if entry.hf_id is None:
        raise UserError(f"--dataset {entry.name}: not on the Hugging Face Hub (ModelScope only: drop --use_hf, "
                        f"or put a copy in ${DATASETS_DIR_ENV}/{entry.name}/)")
    offline = hf_offline()
    if not offline and not hf_hub_reachable():
        raise not_available(entry, "not in a local copy, and the Hugging Face Hub cannot be reached "
                                   "(HF_HUB_OFFLINE=1 reads a cached copy)")
    try:
        import datasets
    except ImportError:
        raise UserError(f"--dataset {entry.name}: the `datasets` package is needed to download it "
                        "(pip install datasets)") from None
    rows: list = []
    for split in entry.splits:
        try:
            loaded = datasets.load_dataset(entry.hf_id, entry.hf_subset, split=split)
        except Exception as error:  # not cached offline, network, auth: all user-facing
            text = str(error).strip()
            reason = text.splitlines()[0][:160] if text else type(error).__name__
            where = "not in the Hugging Face cache (offline)" if offline else "loading it from the Hugging Face Hub failed"
            raise not_available(entry, f"{where}: {reason}") from None
        loaded = _undecoded(datasets, loaded)
        rows += [(f"{entry.name}/{split}:{index + 1}", (loaded, index)) for index in range(len(loaded))]
    picked = [rows[index] for index in sampled_indices(len(rows), sample, seed)]
    return [(source, dict(table[index])) for source, (table, index) in picked], None


def _undecoded(datasets, loaded):
    """Keep images and audio as {"bytes", "path"}: decoding happens when a row is encoded, not here."""
    for name, feature in loaded.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            loaded = loaded.cast_column(name, datasets.Image(decode=False))
        elif isinstance(feature, datasets.Audio) and feature.decode:
            loaded = loaded.cast_column(name, datasets.Audio(decode=False))
    return loaded


def read_modelscope(entry, sample: int | None, seed: int) -> tuple[list, None]:
    if not modelscope_reachable():
        # MsDataset.load asks the hub before reading its cache and, unreachable, fails only after retries.
        # Checked before importing modelscope, which alone takes seconds.
        raise not_available(entry, "not in a local copy, and ModelScope cannot be reached")
    try:
        from modelscope.msdatasets import MsDataset
    except ImportError as error:
        switch = ", or pass --use_hf true (USE_HF=1)" if entry.hf_id else ""
        raise not_available(entry, f"not in a local copy, and ModelScope's MsDataset needed to download it cannot "
                                   f"be imported ({error}; pip install 'modelscope[datasets]'{switch})") from None
    rows: list = []
    for split in entry.splits:
        try:
            loaded = MsDataset.load(entry.modelscope_id, subset_name=entry.ms_subset or "default", split=split)
            loaded = loaded.to_hf_dataset() if hasattr(loaded, "to_hf_dataset") else loaded
        except Exception as error:
            text = str(error).strip()
            reason = text.splitlines()[0][:160] if text else type(error).__name__
            raise not_available(entry, f"loading it from ModelScope failed: {reason}") from None
        try:
            import datasets

            loaded = _undecoded(datasets, loaded)
        except (ImportError, AttributeError):
            pass
        rows += [(f"{entry.name}/{split}:{index + 1}", (loaded, index)) for index in range(len(loaded))]
    picked = [rows[index] for index in sampled_indices(len(rows), sample, seed)]
    return [(source, dict(table[index])) for source, (table, index) in picked], None
