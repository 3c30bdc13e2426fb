"""Tiny random-weight checkpoints of the REAL architectures, for tests, benchmarks and the offline demo.

Each builder uses the real transformers config class at tiny sizes, a byte-level BPE tokenizer trained on a
small corpus that carries the real special tokens (same strings, same order; ids are small because the
vocabulary is small) and the official chat template (fixtures/ copies the official files), and the real
image processor with the official settings except the image size. The result is written with
`save_pretrained`, so it is loaded through exactly the path a user's checkpoint takes.
"""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"

# Tiny models initialised as transformers does (std 0.02) with tied embeddings answer the same tokens whatever
# the prompt (Qwen2-VL emits "\n" forever), so tests comparing outputs could not fail. Builders untie the output
# head and draw the weights wider; tests/test_tiny_checkpoints.py asserts that outputs depend on the input.
INIT_RANGE = 0.1

# Words the demo and the tests speak: keeping them whole tokens makes tiny models learn quickly.
CORPUS = """\
what is in this image what shape is it what colour is it which shape and colour do you see describe the picture
a red circle a green square a blue triangle a yellow circle a purple square an orange triangle
the image shows a red square on a white background there is one shape in the picture
hello world you are a helpful assistant answer the question in one word yes no
picture image audio sound cat dog flower rose sheep animal how many are there one two three four
""" * 4


def fixture_facts(name: str) -> dict:
    return json.loads((FIXTURES / name / "facts.json").read_text())


def fixture_chat_template(name: str) -> str:
    return (FIXTURES / name / "chat_template.jinja").read_text()


def train_bpe(special_tokens: list[str], vocab_size: int, metaspace: bool = False):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    if metaspace:
        # SentencePiece-like (Llama): spaces become '▁' and attach to the following word.
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(set(CORPUS.replace(" ", "▁")) | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;?!'\"()[]{}<>/\\-_=+*#@&%$^~`|▁\n"))
    else:
        # GPT-2 style byte level (Qwen): every byte is representable, so no text is ever unknown.
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False,
                                  special_tokens=special_tokens if metaspace else [])
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer)
    if not metaspace:
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tokenizer


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def patch_json(path: Path, **updates) -> None:
    data = json.loads(path.read_text())
    data.update(updates)
    write_json(path, data)


def discover_builders() -> dict:
    """family name -> build(out_dir, **sizes), one module per family in swiftlite/testing/families/."""
    import importlib
    import pkgutil

    from swiftlite.testing import families

    builders = {}
    for info in pkgutil.iter_modules(families.__path__):
        module = importlib.import_module(f"swiftlite.testing.families.{info.name}")
        builders[module.FAMILY] = module.build
    return builders


def build_tiny_checkpoint(family: str, out_dir: str | Path, **sizes) -> Path:
    """Build the tiny checkpoint of a registered family into `out_dir` (overwritten)."""
    builders = discover_builders()
    if family not in builders:
        raise ValueError(f"no tiny checkpoint builder for family {family!r}; have: {', '.join(sorted(builders))}")
    return builders[family](out_dir, **sizes)


def save_checkpoint(out_dir: Path, model, tokenizer, processor, tokenizer_class: str, processor_class: str,
                    **preprocessor_settings) -> Path:
    """Write a tiny checkpoint the way the hub has it: weights, tokenizer, processor, and the class names the
    published checkpoint records (so loaders see what they see on the hub)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    patch_json(out_dir / "tokenizer_config.json", tokenizer_class=tokenizer_class)
    patch_json(out_dir / "preprocessor_config.json", processor_class=processor_class, **preprocessor_settings)
    return out_dir


def never_stopping_copy(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """A copy of a tiny checkpoint whose greedy answers never end by themselves (for tests of long or cancelled
    generations): the output-head rows of its stop tokens are zeroed, so their logit is 0 while the largest of
    the other few hundred random logits is positive."""
    import shutil

    from safetensors.torch import load_file, save_file

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(checkpoint_dir, out_dir)
    generation = json.loads((out_dir / "generation_config.json").read_text())
    stops = generation.get("eos_token_id")
    stops = set(stops if isinstance(stops, list) else [stops])
    tokenizer = json.loads((out_dir / "tokenizer.json").read_text())
    names = {"<|im_end|>", "<|endoftext|>", "</s>", "<eos>", "<end_of_turn>", "<|eot_id|>", "<|end_of_text|>"}
    stops |= {token["id"] for token in tokenizer.get("added_tokens", []) if token["content"] in names}
    weights = load_file(out_dir / "model.safetensors")
    heads = [key for key in weights if key.endswith("lm_head.weight")]
    if not heads:
        raise ValueError(f"{checkpoint_dir}: no untied lm_head.weight to change")
    for key in heads:
        weights[key][sorted(i for i in stops if i is not None)] = 0
    save_file(weights, out_dir / "model.safetensors", metadata={"format": "pt"})
    return out_dir
