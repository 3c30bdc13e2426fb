"""Named datasets (swiftlite/dataset_registry): each set's preprocessing on rows in its real schema, local
copies ($SWIFTLITE_DATASETS_DIR), splits, `#N`, `NAME:subset`, offline errors, the HF cache, `mm list
datasets`, and `mm sft --dataset coco-en-mini#20` on a tiny Qwen2-VL without network."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import wave

import pytest

from swiftlite.data import load_dataset_rows, load_train_val
from swiftlite.dataset_registry import DATASETS, find_named_dataset
from swiftlite.errors import UserError


def png_bytes(colour=(200, 30, 30), size=(40, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet(path, rows: list[dict]):
    """A parquet file as `datasets` writes one: an Image column is a struct {bytes, path}."""
    import pyarrow as pa
    import pyarrow.parquet as parquet

    path.parent.mkdir(parents=True, exist_ok=True)
    parquet.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path, rows: list[dict]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


@pytest.fixture
def datasets_dir(tmp_path, monkeypatch):
    root = tmp_path / "datasets"
    root.mkdir()
    monkeypatch.setenv("SWIFTLITE_DATASETS_DIR", str(root))
    return root


def coco_row(index: int, colour=(200, 30, 30)) -> dict:
    # modelscope/coco_2014_caption: image (Image feature), caption ("&&"-joined captions), image_id.
    return {"image": {"bytes": png_bytes(colour), "path": f"COCO_val2014_{index:012d}.jpg"},
            "caption": f"A red square number {index}.&&Another caption {index}.", "image_id": str(index)}


def messages(conversation):
    return [(m["role"], m["content"]) for m in conversation.messages]


# ---- each registered set's preprocessing, on rows in its own schema ---------------------------------------
def test_coco_caption_modelscope_schema_in_parquet(datasets_dir):
    write_parquet(datasets_dir / "coco-en-mini" / "validation-00000-of-00001.parquet", [coco_row(1), coco_row(2)])
    rows, skipped = load_dataset_rows(["coco-en-mini"])
    assert skipped == 0 and len(rows) == 2
    conversation = rows[0].conversation
    assert messages(conversation) == [("user", "<image>please describe the image."),
                                      ("assistant", "A red square number 1.")]  # the first of the && captions
    assert conversation.images == [png_bytes()]  # the image's bytes, decoded when the row is encoded
    assert rows[0].source.endswith("validation-00000-of-00001.parquet:1")


def test_coco_caption_karpathy_schema_keeps_urls(datasets_dir):
    # yerevann/coco-karpathy (the HF copy): url, sentences (list), filepath, filename, cocoid, split.
    url = "http://images.cocodataset.org/val2014/COCO_val2014_000000391895.jpg"
    write_jsonl(datasets_dir / "coco-en-mini" / "validation.jsonl", [
        {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "cocoid": 391895, "split": "val",
         "sentences": ["A man riding a motorcycle.", "Someone on a bike."], "url": url}])
    conversation = load_dataset_rows(["coco-en-mini"])[0][0].conversation
    assert messages(conversation)[1] == ("assistant", "A man riding a motorcycle.")
    assert conversation.images == [url]  # fetched lazily, at encode time


def test_okvqa_most_common_answer(datasets_dir):
    # swift/OK-VQA_train (Multimodal-Fatima/OK-VQA_train): image, question, answers (10 strings), question_type...
    write_parquet(datasets_dir / "okvqa" / "data" / "train-00000-of-00001.parquet", [
        {"image": {"bytes": png_bytes(), "path": None}, "question": "What sport can you use this for?",
         "answers": ["racing", "motocross", "racing", "racing", "motocross", "race", "racing", "racing",
                     "motocross", "racing"], "question_type": "one", "question_id": 2971475, "answer_type": "other"}])
    conversation = load_dataset_rows(["okvqa"])[0][0].conversation
    assert messages(conversation) == [("user", "<image>What sport can you use this for?"), ("assistant", "racing")]
    assert len(conversation.images) == 1


def test_ocr_vqa_every_pair_is_a_turn(datasets_dir):
    # howard-hou/OCR-VQA: image, image_id, questions (list), answers (list), title, authorName, genre, ...
    write_parquet(datasets_dir / "ocr-vqa" / "train.parquet", [
        {"image": {"bytes": png_bytes(), "path": "1.jpg"}, "image_id": "071153049X",
         "questions": ["Who wrote this book?", "What is the title of this book?", "Is this a comedy book?"],
         "answers": ["Jay Thompson", "Gross Dad Jokes", "Yes"], "title": "Gross Dad Jokes",
         "authorName": "Jay Thompson", "genre": "Humor & Entertainment"}])
    conversation = load_dataset_rows(["ocr-vqa"])[0][0].conversation
    assert messages(conversation) == [
        ("user", "<image>Who wrote this book?"), ("assistant", "Jay Thompson"),
        ("user", "What is the title of this book?"), ("assistant", "Gross Dad Jokes"),
        ("user", "Is this a comedy book?"), ("assistant", "Yes")]


REFCOCO_ROW = {  # jxu124/refcoco: bbox is [x1, y1, x2, y2] in pixels; raw_image_info is JSON text
    "sent_ids": [0, 1], "file_name": "COCO_train2014_000000581857_16.jpg", "ann_id": 1719310, "ref_id": 0,
    "image_id": 581857, "split": "train", "category_id": 1,
    "image_path": "coco/train2014/COCO_train2014_000000581857.jpg",
    "bbox": [103.93, 299.99, 238.15, 477.41], "captions": ["the lady with the blue shirt", "lady in blue"],
    "raw_image_info": json.dumps({"file_name": "COCO_train2014_000000581857.jpg", "height": 640, "width": 427,
                                  "coco_url": "http://images.cocodataset.org/train2014/COCO_train2014_000000581857.jpg"}),
}
REFCOCO_BOX = "(243,469),(558,746)"  # 103.93/427, 299.99/640, 238.15/427, 477.41/640 on 0-1000


def test_refcoco_grounding_and_caption_subsets(datasets_dir):
    write_jsonl(datasets_dir / "refcoco" / "train.jsonl", [REFCOCO_ROW])
    grounding = load_dataset_rows(["refcoco"])[0][0].conversation
    assert messages(grounding) == [
        ("user", "<image>Locate <ref>the lady with the blue shirt</ref> in the image."),
        ("assistant", f"<ref>the lady with the blue shirt</ref><box>{REFCOCO_BOX}</box>")]
    # The image is not in this copy: the COCO URL from raw_image_info, fetched when the row is encoded.
    assert grounding.images == ["http://images.cocodataset.org/train2014/COCO_train2014_000000581857.jpg"]
    caption = load_dataset_rows(["refcoco:caption"])[0][0].conversation
    assert messages(caption) == [("user", f"<image>Describe the region <box>{REFCOCO_BOX}</box> in the image."),
                                 ("assistant", "the lady with the blue shirt")]
    # With the image in the copy (under its image_path), the local file is used.
    image = datasets_dir / "refcoco" / "coco" / "train2014" / "COCO_train2014_000000581857.jpg"
    image.parent.mkdir(parents=True)
    image.write_bytes(png_bytes(size=(427, 640)))
    assert load_dataset_rows(["refcoco"])[0][0].conversation.images == [str(image)]


def write_wav(path, seconds=0.1, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(b"\x00\x00" * int(seconds * rate))
    return path


def test_aishell_asr_audio_paths(datasets_dir):
    # speech_asr/speech_asr_aishell1_trainsets: "Audio:FILE" (wav path), "Text:LABEL" (space-separated).
    folder = datasets_dir / "aishell1-zh-mini"
    wav = write_wav(folder / "wav" / "BAC009S0764W0121.wav")
    write_jsonl(folder / "validation.jsonl", [{"Audio:FILE": "wav/BAC009S0764W0121.wav",
                                               "Text:LABEL": "甚至 出现 交易 几乎 停滞 的 情况"}])
    write_jsonl(folder / "test.jsonl", [{"Audio:FILE": "wav/BAC009S0764W0121.wav", "Text:LABEL": "一 二 三"}])
    write_jsonl(folder / "train.jsonl", [{"Audio:FILE": "wav/missing.wav", "Text:LABEL": "不 在 迷你 集"}])
    rows, _ = load_dataset_rows(["aishell1-zh-mini"])
    assert [messages(row.conversation) for row in rows] == [
        [("user", "<audio>语音转文本"), ("assistant", "甚至出现交易几乎停滞的情况")],
        [("user", "<audio>语音转文本"), ("assistant", "一二三")]]  # validation then test; train is not mini
    assert rows[0].conversation.audios == [str(wav)]


def test_alpaca_text_only(datasets_dir):
    # vicgalle/alpaca-gpt4 / AI-ModelScope/alpaca-gpt4-data-en: instruction, input, output (+ text).
    write_jsonl(datasets_dir / "alpaca-en" / "train.jsonl", [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat well.", "text": "..."},
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour", "text": "..."}])
    rows, _ = load_dataset_rows(["alpaca-en"])
    assert messages(rows[1].conversation) == [("user", "Translate to French.\nGood morning"), ("assistant", "Bonjour")]
    assert rows[0].conversation.images == []


def test_every_registered_set_is_covered_here():
    tested = {"coco-en", "coco-en-mini", "okvqa", "ocr-vqa", "refcoco", "aishell1-zh", "aishell1-zh-mini", "alpaca-en"}
    assert set(DATASETS) == tested  # a new entry needs a schema test above
    for entry in DATASETS.values():
        assert entry.modelscope_id and entry.splits and entry.rows > 0 and entry.licence


# ---- names, subsets, splits, sampling, mixing -------------------------------------------------------------
def test_one_copy_by_hub_id_serves_both_coco_names(datasets_dir):
    folder = datasets_dir / "modelscope" / "coco_2014_caption"
    write_parquet(folder / "train.parquet", [coco_row(i) for i in range(3)])
    write_parquet(folder / "validation.parquet", [coco_row(i) for i in range(10, 15)])
    assert len(load_dataset_rows(["coco-en-mini"])[0]) == 5
    assert len(load_dataset_rows(["coco-en"])[0]) == 8
    assert len(load_dataset_rows(["COCO_EN_MINI"])[0]) == 5  # ms-swift spellings


def test_sample_subset_and_mixing_with_files(datasets_dir, tmp_path):
    write_parquet(datasets_dir / "coco-en-mini" / "validation.parquet", [coco_row(i) for i in range(30)])
    write_jsonl(datasets_dir / "refcoco" / "train.jsonl", [REFCOCO_ROW])
    own = write_jsonl(tmp_path / "own.jsonl", [{"query": "hi", "response": "hello"}])
    first, _ = load_dataset_rows(["coco-en-mini#5"], seed=1)
    again, _ = load_dataset_rows(["coco-en-mini#5"], seed=1)
    other, _ = load_dataset_rows(["coco-en-mini#5"], seed=2)
    assert len({row.source for row in first}) == 5
    assert [r.source for r in first] == [r.source for r in again] != [r.source for r in other]
    assert len(load_dataset_rows(["coco-en-mini#45"])[0]) == 45  # beyond its size: whole copies, then a sample
    rows, _ = load_dataset_rows(["coco-en-mini#4", "refcoco:caption", str(own)])
    assert len(rows) == 6 and rows[4].conversation.messages[1]["content"] == "the lady with the blue shirt"
    assert rows[5].source == f"{own}:1"
    train, val, _ = load_train_val(["coco-en-mini#20"], None, dataset_test_ratio=0.1, seed=42)
    assert (len(train), len(val)) == (18, 2)
    with pytest.raises(UserError, match=r"refcoco has no subset 'boxes' \(subsets: grounding, caption\)"):
        load_dataset_rows(["refcoco:boxes"])
    assert find_named_dataset("train.jsonl") is None


def test_bad_rows_name_file_and_row_and_strict_false_skips(datasets_dir):
    bad = dict(coco_row(2), caption="")
    path = write_parquet(datasets_dir / "coco-en-mini" / "validation.parquet", [coco_row(1), bad, coco_row(3)])
    with pytest.raises(UserError) as raised:
        load_dataset_rows(["coco-en-mini"])
    assert str(raised.value).startswith(f"{path}:2: coco-en-mini: the caption is empty")
    rows, skipped = load_dataset_rows(["coco-en-mini"], strict=False)
    assert skipped == 1 and [row.source for row in rows] == [f"{path}:1", f"{path}:3"]
    write_jsonl(datasets_dir / "okvqa" / "train.jsonl", [{"image": "x.png", "query": "wrong schema"}])
    with pytest.raises(UserError, match=r"okvqa: column 'question' is missing \(columns: image, query\)"):
        load_dataset_rows(["okvqa"])


def test_copy_without_the_wanted_split_is_a_clear_error(datasets_dir):
    write_parquet(datasets_dir / "coco-en-mini" / "train.parquet", [coco_row(1)])
    with pytest.raises(UserError, match="has no validation files \\(found splits: train\\)"):
        load_dataset_rows(["coco-en-mini"])


# ---- offline: hubs and the Hugging Face cache -------------------------------------------------------------
def run_python(code: str, **env) -> str:
    # A subprocess, so that importing `datasets` does not weigh on the rest of the test session.
    environment = {key: value for key, value in os.environ.items() if key != "SWIFTLITE_DATASETS_DIR"}
    environment.update(env)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=120)
    return result.stdout.strip() + result.stderr.strip()[-2000:] * (result.returncode != 0)


LOAD = ("from swiftlite.data import load_dataset_rows\n"
        "try:\n    rows, _ = load_dataset_rows({specs!r}, use_hf={use_hf})\n"
        "    print([(r.source, r.conversation.messages[1]['content'], r.conversation.images) for r in rows])\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n")


def test_not_cached_offline_says_what_to_download(tmp_path):
    output = run_python(LOAD.format(specs=["coco-en-mini#3"], use_hf=True), HF_HUB_OFFLINE="1",
                        HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "empty-cache"))
    assert output.startswith("UserError --dataset coco-en-mini: not in the Hugging Face cache (offline)"), output
    assert "modelscope download --dataset modelscope/coco_2014_caption" in output
    assert "huggingface-cli download --repo-type dataset yerevann/coco-karpathy" in output
    assert "SWIFTLITE_DATASETS_DIR=DIR" in output and "or pass a local .jsonl/.json/.csv file instead" in output
    assert "\n" not in output


def test_default_hub_and_modelscope_only_sets_without_network(monkeypatch):
    monkeypatch.delenv("SWIFTLITE_DATASETS_DIR", raising=False)
    monkeypatch.delenv("USE_HF", raising=False)
    monkeypatch.setenv("MODELSCOPE_DOMAIN", "127.0.0.1")  # nothing listens on 443 here
    with pytest.raises(UserError, match=r"--dataset coco-en-mini: not in a local copy, and ModelScope cannot be "
                                        r"reached\. Download it where there is network"):
        load_dataset_rows(["coco-en-mini"])
    with pytest.raises(UserError, match=r"aishell1-zh-mini: not on the Hugging Face Hub \(ModelScope only"):
        load_dataset_rows(["aishell1-zh-mini"], use_hf=True)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(UserError, match="the Hugging Face Hub cannot be reached"):
        load_dataset_rows(["alpaca-en"], use_hf=True)


def test_hf_cache_is_read_offline(tmp_path):
    """A dataset cached by `datasets` (as a hub parquet dataset is) loads with HF_HUB_OFFLINE=1 and --use_hf."""
    url = "http://images.cocodataset.org/val2014/COCO_val2014_{:012d}.jpg"
    data_file = write_jsonl(tmp_path / "validation.jsonl", [
        {"sentences": [f"caption {i}", "other"], "url": url.format(i), "filename": f"{i}.jpg", "cocoid": i}
        for i in range(6)])
    cache = tmp_path / "hf-cache"
    # Built with the same builder a hub json/parquet dataset uses, then placed where a hub download is cached:
    # <cache>/<owner>___<name>/<config>/<version>/<commit>/<name>-<split>.arrow
    target = cache / "yerevann___coco-karpathy" / "default" / "0.0.0" / ("0" * 40)
    build = ("import shutil\n"
             "from datasets.data_files import DataFilesDict\n"
             "from datasets.packaged_modules.json.json import Json\n"
             f"files = DataFilesDict.from_patterns({{'validation': [{str(data_file)!r}]}})\n"
             f"builder = Json(cache_dir={str(tmp_path / 'build')!r}, dataset_name='coco-karpathy', "
             "config_name='default', data_files=files)\n"
             f"builder.download_and_prepare()\nshutil.copytree(builder.cache_dir, {str(target)!r})\nprint('built')\n")
    assert run_python(build, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(cache)).endswith("built")
    output = run_python(LOAD.format(specs=["coco-en-mini#2"], use_hf=None), HF_HUB_OFFLINE="1", USE_HF="1",
                        HF_DATASETS_CACHE=str(cache))
    rows = eval(output.splitlines()[-1])  # noqa: S307 (our own repr of plain data)
    assert len(rows) == 2
    for source, reply, images in rows:
        index = int(re.fullmatch(r"coco-en-mini/validation:(\d+)", source).group(1)) - 1
        assert reply == f"caption {index}" and images == [url.format(index)]


# ---- the CLI -----------------------------------------------------------------------------------------------
def test_mm_list_datasets(capsys):
    from swiftlite.cli import main

    assert main(["list", "datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["dataset", "task", "media", "rows", "splits"]
    row = next(line for line in lines if line.startswith("coco-en-mini "))
    assert "40,504" in row and "modelscope/coco_2014_caption" in row and "CC BY 4.0" in row
    assert any(line.startswith("refcoco ") and "grounding/caption" in line for line in lines)


def test_mm_sft_coco_en_mini_from_a_local_copy(capsys, tmp_path, datasets_dir, qwen2_vl_dir, monkeypatch):
    """`mm sft --dataset coco-en-mini#20` without network: 19 good rows and one undecodable image, skipped."""
    import torch

    from swiftlite.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]
    rows = [coco_row(i, colours[i % 3]) for i in range(20)]
    rows[7]["image"] = {"bytes": b"not a png", "path": "broken.jpg"}
    write_parquet(datasets_dir / "coco-en-mini" / "validation-00000-of-00001.parquet", rows)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["sft", "--model", str(qwen2_vl_dir), "--dataset", "coco-en-mini#20", "--max_steps", "2",
                     "--batch_size", "2", "--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0",
                     "--lazy_tokenize", "false", "--strict", "false", "--dataset_test_ratio", "0",
                     "--output_dir", str(tmp_path / "out")])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert "dataset: 20 training rows" in err
    checkpoint = re.search(r"last_model_checkpoint: (\S+)", err).group(1)
    assert os.path.isfile(os.path.join(checkpoint, "adapter_model.safetensors"))
    args = json.loads(open(os.path.join(checkpoint, "sft_args.json")).read())
    assert args["dataset"] == ["coco-en-mini#20"]  # a name, reloadable by `mm infer --load_dataset_config`
    logs = [json.loads(line) for line in open(os.path.join(os.path.dirname(checkpoint), "logging.jsonl"))]
    assert logs[-1]["dropped_rows"] == 1  # the undecodable image: counted, not fatal
