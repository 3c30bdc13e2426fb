"""Checkpoints in each layout transformers writes, and the official processor built from a saved directory.

transformers 5's `processor.save_pretrained` folds the image processor (or audio feature extractor) into
processor_config.json and writes no preprocessor_config.json; older versions, and most hub repos, have
preprocessor_config.json. `save_in_layout` re-saves a checkpoint's processor by `processor.save_pretrained`
in either layout, so tests see both as users' checkpoints have them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

LAYOUTS = ("processor_config", "preprocessor_config")


def official_processor(checkpoint_dir, processor_class: str | None = None, video_processor=None, **overrides):
    """The family's official processor, built by transformers from the saved directory alone (never from
    swiftlite's loaded objects, so a loading mistake of ours cannot hide on both sides).

    `processor_class.from_pretrained` where it can run here. Processors with a torchvision-only video processor
    (Qwen2-VL, LLaVA-OneVision, ...) are built as transformers' from_pretrained builds them, from the parts
    transformers loads from the directory and the processor settings it reads (get_processor_dict), with
    `video_processor` (None unless a test needs a stand-in) in place of the video processor.
    """
    import importlib.util
    import json
    from pathlib import Path

    import transformers
    from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

    checkpoint_dir = Path(checkpoint_dir)
    if processor_class is None:
        for name in ("processor_config.json", "preprocessor_config.json"):
            if (checkpoint_dir / name).is_file():
                processor_class = processor_class or json.loads((checkpoint_dir / name).read_text()).get("processor_class")
    base = getattr(transformers, processor_class)
    attributes = base.get_attributes()
    if "video_processor" not in attributes or importlib.util.find_spec("torchvision") is not None:
        return base.from_pretrained(checkpoint_dir, **overrides)

    class ImageOnlyProcessor(base):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name != "video_processor":
                return super().check_argument_for_proper_class(argument_name, argument)

    # Saved as the family's own class (processor_config.json records the class name).
    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = base.__name__
    settings, _ = base.get_processor_dict(str(checkpoint_dir))
    parts = {"tokenizer": AutoTokenizer.from_pretrained(checkpoint_dir), "video_processor": video_processor}
    if "image_processor" in attributes:
        parts["image_processor"] = AutoImageProcessor.from_pretrained(checkpoint_dir)
        if video_processor is None:
            # MiniCPM-V's processor reads video settings when built: they are its image processor's.
            from swiftlite.models.processors import NoVideoProcessor

            parts["video_processor"] = NoVideoProcessor(parts["image_processor"])
    if "feature_extractor" in attributes:
        parts["feature_extractor"] = AutoFeatureExtractor.from_pretrained(checkpoint_dir)
    accepted = set(_parameters(base.__init__))
    kwargs = {k: v for k, v in settings.items() if k in accepted and k not in parts}
    kwargs.update(overrides)
    return ImageOnlyProcessor(**parts, **kwargs)


def _parameters(function) -> list[str]:
    import inspect

    return list(inspect.signature(function).parameters)



def save_in_layout(checkpoint_dir: str | Path, out_dir: str | Path, layout: str) -> Path:
    """Copy a checkpoint to `out_dir` with its processor saved by the official `processor.save_pretrained`:
    'processor_config' is today's layout (sub-processors nested in processor_config.json, no
    preprocessor_config.json); 'preprocessor_config' the older one (the image processor or feature extractor in
    preprocessor_config.json, the processor's own settings in processor_config.json)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    processor = official_processor(checkpoint_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    processor_files = {"preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
                       "chat_template.json", "chat_template.jinja"}
    for path in checkpoint_dir.iterdir():
        if path.is_file() and path.name not in processor_files:
            shutil.copy2(path, out_dir / path.name)
    tokenizer_files = {p.name: p.read_bytes() for p in out_dir.iterdir() if p.name.startswith(("tokenizer", "special_tokens"))}
    from swiftlite.models.processors import NoVideoProcessor

    if "video_processor" in type(processor).get_attributes() and isinstance(
            getattr(processor, "video_processor", None), (NoVideoProcessor, type(None))):
        # save_pretrained writes every attribute: the video processor we could not build (no torchvision) is
        # left out, as a checkpoint saved without one would be. The class is official_processor's own subclass.
        attributes = [name for name in type(processor).get_attributes() if name != "video_processor"]
        type(processor).get_attributes = classmethod(lambda cls: attributes)
        processor.video_processor = None  # nor its stand-in
    processor.save_pretrained(out_dir)
    for name, data in tokenizer_files.items():  # keep the tokenizer files exactly as the checkpoint had them
        (out_dir / name).write_bytes(data)
    if layout == "preprocessor_config":
        settings = json.loads((out_dir / "processor_config.json").read_text())
        for key in ("image_processor", "feature_extractor"):
            if isinstance(settings.get(key), dict):
                part = settings.pop(key)
                part.setdefault("processor_class", settings.get("processor_class"))
                (out_dir / "preprocessor_config.json").write_text(json.dumps(part, indent=2) + "\n")
        (out_dir / "processor_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    return out_dir
