"""Dataset files -> Conversations (swiftlite/data.py): formats, media paths, bad rows, sampling, splits."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from swiftlite.data import load_dataset_rows, load_train_val, parse_spec, split_train_val
from swiftlite.errors import UserError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def images(tmp_path):
    """Two PNGs beside the dataset files (a sub-folder, referenced relatively)."""
    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()
    paths = []
    for name, colour in (("a.png", (255, 0, 0)), ("b.png", (0, 0, 255))):
        Image.new("RGB", (16, 16), colour).save(folder / name)
        paths.append(folder / name)
    return paths


def only(rows):
    assert len(rows) == 1
    return rows[0].conversation


# ---- formats -------------------------------------------------------------------------------------------
def test_conversations_format_with_tags_and_relative_paths(tmp_path, images):
    path = write_jsonl(tmp_path / "train.jsonl", [{"conversations": [
        {"from": "system", "value": "be brief"},
        {"from": "user", "value": "Picture 1:<img>pics/a.png</img>\nPicture 2:<img>pics/b.png</img>\nsame?"},
        {"from": "assistant", "value": "no"},
        {"from": "human", "value": "Picture 1:<img>pics/a.png</img>\nand now?"},
        {"from": "gpt", "value": "red"},
    ]}])
    conversation = only(load_dataset_rows([str(path)])[0])
    assert [m["role"] for m in conversation.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert conversation.messages[1]["content"] == "Picture 1:<image>\nPicture 2:<image>\nsame?"
    assert conversation.messages[3]["content"] == "Picture 1:<image>\nand now?"
    # Relative to the dataset file, not to the working directory; made absolute for the encoder.
    assert conversation.images == [str(images[0]), str(images[1]), str(images[0])]


def test_conversations_format_with_placeholders_and_images_list(tmp_path, images):
    path = write_jsonl(tmp_path / "train.jsonl", [{"conversations": [
        {"from": "user", "value": "<image><image>compare"}, {"from": "assistant", "value": "ok"},
        {"from": "user", "value": "text only turn"}, {"from": "assistant", "value": "fine"},
    ], "images": ["pics/b.png", str(images[0])]}])
    conversation = only(load_dataset_rows([str(path)])[0])
    assert conversation.images == [str(images[1]), str(images[0])]
    assert conversation.messages[0]["content"] == "<image><image>compare"


def test_messages_format_string_and_openai_parts(tmp_path, images):
    url = "https://example.com/cat.png"
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"messages": [{"role": "user", "content": "<image>what is it"}, {"role": "assistant", "content": "a"}],
         "images": ["pics/a.png"]},
        {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "look "}, {"type": "image_url", "image_url": {"url": url}},
                                         {"type": "image", "image": "pics/b.png"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "two pictures"}]},
        ]},
    ])
    rows, skipped = load_dataset_rows([str(path)])
    assert skipped == 0
    assert rows[0].conversation.images == [str(images[0])]
    second = rows[1].conversation
    assert second.messages[0]["content"] == "look <image><image>"
    assert second.messages[1]["content"] == "two pictures"
    assert second.images == [url, str(images[1])]  # URLs are kept as they are
    assert [row.source for row in rows] == [f"{path}:1", f"{path}:2"]


def test_query_response_history_format(tmp_path, images):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([{"system": "sys", "query": "and this?", "response": "blue",
                                 "history": [["<image>what colour", "red"]], "images": ["pics/a.png"]}]))
    conversation = only(load_dataset_rows([str(path)])[0])
    assert conversation.messages == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "<image>what colour"},
        {"role": "assistant", "content": "red"}, {"role": "user", "content": "and this?"},
        {"role": "assistant", "content": "blue"}]
    assert conversation.images == [str(images[0])]


def test_query_images_without_placeholder_go_to_first_user_turn(tmp_path, images):
    path = write_jsonl(tmp_path / "t.jsonl", [{"query": "q2", "response": "r2", "history": [["q1", "r1"]],
                                                "images": ["pics/a.png"]}])
    conversation = only(load_dataset_rows([str(path)])[0])
    assert conversation.messages[0]["content"] == "<image>q1"


def test_alpaca_format_and_csv(tmp_path):
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerow({"instruction": "translate", "input": "hello", "output": "bonjour"})
        writer.writerow({"instruction": "say yes", "input": "", "output": "yes"})
    rows, _ = load_dataset_rows([str(path)])
    assert rows[0].conversation.messages == [{"role": "user", "content": "translate\nhello"},
                                            {"role": "assistant", "content": "bonjour"}]
    assert rows[1].conversation.messages[0]["content"] == "say yes"
    assert rows[1].source == f"{path}:2"


def test_csv_with_json_columns(tmp_path, images):
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["query", "response", "images"])
        writer.writeheader()
        writer.writerow({"query": "<image>colour?", "response": "red", "images": json.dumps(["pics/a.png"])})
    conversation = only(load_dataset_rows([str(path)])[0])
    assert conversation.images == [str(images[0])]


def test_json_file_holding_json_lines_is_read(tmp_path):
    path = tmp_path / "train.json"
    write_jsonl(path, [{"query": "a", "response": "b"}, {"query": "c", "response": "d"}])
    rows, _ = load_dataset_rows([str(path)])
    assert [row.conversation.messages[1]["content"] for row in rows] == ["b", "d"]


def test_audio_placeholders_and_list(tmp_path):
    audio = tmp_path / "clip.wav"
    audio.write_bytes(b"RIFF")
    path = write_jsonl(tmp_path / "t.jsonl", [{"messages": [
        {"role": "user", "content": "<audio>what was said"}, {"role": "assistant", "content": "hi"}],
        "audios": ["clip.wav"]}])
    conversation = only(load_dataset_rows([str(path)])[0])
    assert conversation.audios == [str(audio)]


# ---- bad rows ------------------------------------------------------------------------------------------
BAD_ROWS = [
    ({"foo": 1}, "unknown row format"),
    ({"messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}],
      "images": ["pics/missing.png"]}, "image file not found: pics/missing.png"),
    ({"messages": [{"role": "user", "content": "<image><image>x"}, {"role": "assistant", "content": "y"}],
      "images": ["pics/a.png"]}, "2 <image> placeholder(s) but 1 image(s)"),
    ({"messages": [{"role": "user", "content": "hello"}]}, "no assistant turn"),
    ({"conversations": [{"from": "user", "value": "a"}, {"from": "robot", "value": "b"}]}, "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]}, "reply is empty"),
]


@pytest.mark.parametrize("bad_row, message", BAD_ROWS, ids=[m.split()[0] + str(i) for i, (_, m) in enumerate(BAD_ROWS)])
def test_bad_row_names_file_row_and_problem(tmp_path, images, bad_row, message):
    good = {"query": "q", "response": "r"}
    path = write_jsonl(tmp_path / "train.jsonl", [good, bad_row, good])
    with pytest.raises(UserError) as raised:
        load_dataset_rows([str(path)])
    assert f"{path}:2: " in str(raised.value)
    assert message in str(raised.value)
    rows, skipped = load_dataset_rows([str(path)], strict=False)
    assert skipped == 1
    assert [row.source for row in rows] == [f"{path}:1", f"{path}:3"]


def test_bad_json_line_names_its_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"query": "q", "response": "r"}\n{"query": "q",\n{"query": "q", "response": "r"}\n')
    with pytest.raises(UserError, match=rf"{path}:2: invalid JSON"):
        load_dataset_rows([str(path)])
    assert load_dataset_rows([str(path)], strict=False)[1] == 1


def test_broken_json_file_names_its_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n{"query": "q", "response": "r"},\n{"query": }\n]')
    with pytest.raises(UserError, match=rf"{path}:3: invalid JSON"):
        load_dataset_rows([str(path)])


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_dataset_rows([str(tmp_path / "nope.jsonl")])
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(UserError, match="unsupported file type"):
        load_dataset_rows([str(tmp_path / "data.txt")])


def test_prompts_without_response_are_accepted_for_inference(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"query": "only a question"}])
    rows, _ = load_dataset_rows([str(path)], require_response=False)
    assert rows[0].conversation.messages == [{"role": "user", "content": "only a question"}]


def test_hub_dataset_offline_is_a_clear_error():
    # A subprocess, so that importing `datasets` does not weigh on the rest of the test session.
    code = ("from swiftlite.data import load_dataset_rows\n"
            "try:\n    load_dataset_rows(['someone/some-dataset'])\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                            timeout=120).stdout
    assert output.startswith("UserError --dataset someone/some-dataset: not a local file, and loading it from the hub failed")
    assert "\n" not in output.strip()


def test_unreachable_hub_fails_fast_without_retries(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(UserError, match="the Hugging Face Hub cannot be reached"):
        load_dataset_rows(["someone/some-dataset"])
    with pytest.raises(UserError, match="train.jsnl: no such file"):  # a mistyped file is not a hub id
        load_dataset_rows(["train.jsnl"])


# ---- sampling and splitting ----------------------------------------------------------------------------
def many_rows(tmp_path, count=20):
    return write_jsonl(tmp_path / "many.jsonl", [{"query": f"q{i}", "response": f"r{i}"} for i in range(count)])


def test_sample_suffix_is_seeded_and_repeats_beyond_size(tmp_path):
    path = many_rows(tmp_path)
    assert parse_spec(f"{path}#5") == (str(path), 5)
    first, _ = load_dataset_rows([f"{path}#5"], seed=1)
    again, _ = load_dataset_rows([f"{path}#5"], seed=1)
    other, _ = load_dataset_rows([f"{path}#5"], seed=2)
    assert [r.source for r in first] == [r.source for r in again]
    assert [r.source for r in first] != [r.source for r in other]
    assert len({r.source for r in first}) == 5
    more, _ = load_dataset_rows([f"{path}#45"], seed=1)
    assert len(more) == 45 and len({r.source for r in more}) == 20


def test_split_is_deterministic_and_disjoint(tmp_path):
    rows, _ = load_dataset_rows([str(many_rows(tmp_path))])
    train, val = split_train_val(rows, 0.1, seed=42)
    assert len(val) == 2 and len(train) == 18
    assert not {r.source for r in train} & {r.source for r in val}
    again_train, again_val = split_train_val(rows, 0.1, seed=42)
    assert [r.source for r in again_val] == [r.source for r in val]
    assert [r.source for r in split_train_val(rows, 0.1, seed=7)[1]] != [r.source for r in val]
    assert split_train_val(rows, 0.0, seed=42) == (rows, [])
    assert len(split_train_val(rows[:3], 0.01, seed=42)[1]) == 1  # at least one row held out


def test_load_train_val_with_and_without_val_dataset(tmp_path):
    path = many_rows(tmp_path)
    val_path = write_jsonl(tmp_path / "val.jsonl", [{"query": "v", "response": "w"}])
    train, val, skipped = load_train_val([str(path)], [str(val_path)], 0.5, 42, True)
    assert (len(train), len(val), skipped) == (20, 1, 0)
    train, val, _ = load_train_val(dataset=[str(path)], val_dataset=None, dataset_test_ratio=0.25, seed=3,
                                   strict=True, model_type="ignored")  # a whole sft_args.json may be passed
    assert (len(train), len(val)) == (15, 5)


# ---- the shape of the data path ------------------------------------------------------------------------
DATA_LAYERS = {  # module -> its layer: a module imports only modules of lower layers
    "swiftlite.hub_env": 0, "swiftlite.dataset_readers": 0,
    "swiftlite.dataset_formats": 1,
    "swiftlite.dataset_registry.preprocess": 2, "swiftlite.dataset_registry.sources": 2,
    "swiftlite.dataset_registry": 3,
    "swiftlite.data": 4,
}


def swiftlite_imports(module: str) -> set[tuple[str, str]]:
    """(imported module, name) pairs of every swiftlite import in the module's file, function-level ones too."""
    import ast
    from pathlib import Path

    import swiftlite

    relative = Path(*module.split(".")[1:])
    root = Path(swiftlite.__file__).parent
    path = root / relative / "__init__.py" if (root / relative).is_dir() else (root / relative).with_suffix(".py")
    tree = ast.parse(path.read_text())
    found, module_names = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("swiftlite"):
            for alias in node.names:
                joined = f"{node.module}.{alias.name}"
                found.add((joined, "") if joined in DATA_LAYERS else (node.module, alias.name))
                if joined in DATA_LAYERS:
                    module_names[alias.asname or alias.name] = joined
    for node in ast.walk(tree):  # `from swiftlite import data` then `data._read_jsonl`
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_names:
            found.add((module_names[node.value.id], node.attr))
    return found


def test_data_flows_downhill_without_private_imports():
    """Readers and formats at the bottom, dataset_registry above them, data.py on top: no circle, and no module
    takes another's private names (sources.py once read data.py's _read_jsonl)."""
    for module, layer in DATA_LAYERS.items():
        for imported, name in swiftlite_imports(module):
            assert not name.startswith("_"), f"{module} imports the private {imported}.{name}"
            if imported in DATA_LAYERS and imported != module:
                assert DATA_LAYERS[imported] < layer, f"{module} imports {imported}, which is not below it"


@pytest.mark.parametrize(("value", "on"), [("1", True), ("TRUE", True), ("yes", True), ("0", False),
                                            ("no", False), ("", False), (None, False)])
def test_env_flags_read_when_asked(monkeypatch, value, on):
    from swiftlite.hub_env import env_flag, hf_offline, use_hf_default

    for name in ("USE_HF", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    if value is not None:
        monkeypatch.setenv("USE_HF", value)
        monkeypatch.setenv("HF_DATASETS_OFFLINE", value)
    assert env_flag("USE_HF") is on and use_hf_default() is on and hf_offline() is on
