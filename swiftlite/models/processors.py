"""A checkpoint's processors, loaded as transformers loads them, from every layout it reads.

transformers has written a checkpoint's processor settings in several layouts over the years, and reads all:
- `preprocessor_config.json`: the image processor or the audio feature extractor (older saves, most hub repos);
- `processor_config.json` with the sub-processors nested under `image_processor`, `feature_extractor`,
  `video_processor` (what transformers 5's `processor.save_pretrained` writes, with no preprocessor_config.json);
- `video_preprocessor_config.json`: the video processor;
- `chat_template.jinja`, `chat_template.json` or the tokenizer_config's `chat_template`.
We ask transformers' Auto classes for each part instead of picking files by name, so a layout transformers reads
is one we read. Parts are loaded one by one rather than with AutoProcessor: AutoProcessor insists on the video
processor of Qwen2-VL and friends, which needs torchvision; without torchvision the image processors' PIL backend
is used and a video is refused with a line naming torchvision.

An image or audio model whose processor is missing or broken fails here, at load, naming the file and the fix,
instead of answering every media row with "takes no images".
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swiftlite.errors import UserError

# Keys of processor_config.json that hold a nested sub-processor (or tokenizer, or the class name) rather than
# a setting of the processor.
NESTED_KEYS = ("image_processor", "feature_extractor", "video_processor", "tokenizer", "chat_template",
               "processor_class")


@dataclass
class CheckpointProcessors:
    """What a checkpoint needs besides its tokenizer to encode media, as transformers loads it."""

    image_processor: Any = None
    feature_extractor: Any = None
    video_processor: Any = None
    # The processor's own settings (image_seq_length, patch_size, ...): processor_config.json without its
    # nested sub-processors.
    processor_config: dict = field(default_factory=dict)
    chat_template: str | None = None
    # The official processor class (Qwen2VLProcessor, ...), as AutoProcessor would pick it.
    processor_class: str | None = None


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} should hold a JSON object")
    return data


def processor_settings_files(model_dir: Path) -> dict[str, str]:
    """kind ('image', 'audio', 'video') -> where its settings are written, in the layouts transformers reads."""
    model_dir = Path(model_dir)
    found: dict[str, str] = {}
    processor_file = model_dir / "processor_config.json"
    nested = read_json(processor_file) if processor_file.is_file() else {}
    preprocessor_file = model_dir / "preprocessor_config.json"
    preprocessor = read_json(preprocessor_file) if preprocessor_file.is_file() else {}
    # preprocessor_config.json holds an image processor or a feature extractor; older image checkpoints name
    # both types (CLIP's "feature_extractor_type": "CLIPFeatureExtractor"), so the family's modality decides.
    if isinstance(nested.get("image_processor"), dict):
        found["image"] = "processor_config.json (image_processor)"
    elif preprocessor:
        found["image"] = "preprocessor_config.json"
    if isinstance(nested.get("feature_extractor"), dict):
        found["audio"] = "processor_config.json (feature_extractor)"
    elif preprocessor:
        found["audio"] = "preprocessor_config.json"
    if isinstance(nested.get("video_processor"), dict):
        found["video"] = "processor_config.json (video_processor)"
    elif (model_dir / "video_preprocessor_config.json").is_file():
        found["video"] = "video_preprocessor_config.json"
    return found


def chat_template_from_files(model_dir: Path) -> str | None:
    """The chat template a processor would use when the tokenizer carries none."""
    model_dir = Path(model_dir)
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text()
    if (model_dir / "chat_template.json").is_file():
        return read_json(model_dir / "chat_template.json").get("chat_template")
    if (model_dir / "processor_config.json").is_file():
        template = read_json(model_dir / "processor_config.json").get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _missing(model_dir: Path, kind: str, family_name: str) -> UserError:
    part = {"image": "image processor", "audio": "audio feature extractor"}[kind]
    return UserError(
        f"{model_dir}: this {family_name} checkpoint takes {kind}s but holds no {part} settings (neither "
        f"preprocessor_config.json nor an `{'image_processor' if kind == 'image' else 'feature_extractor'}` entry "
        "in processor_config.json). Save the base model's processor next to the weights: "
        "AutoProcessor.from_pretrained(<base model>).save_pretrained(<this dir>), or copy its preprocessor_config.json"
    )


def _broken(model_dir: Path, kind: str, where: str, error: Exception) -> UserError:
    first_line = (str(error).splitlines() or [""])[0][:300]
    return UserError(
        f"{model_dir / where.split(' ')[0]}: could not load the {kind} processor ({type(error).__name__}: {first_line}). "
        "Fix or replace that file with the base model's processor settings"
    )


def load_processors(model_dir: Path, family=None, from_pretrained_kwargs: dict | None = None) -> CheckpointProcessors:
    """Load the image processor, feature extractor and video processor the checkpoint declares.

    A native image or audio family must have its processor: a missing or unreadable one is a UserError here.
    Remote-code families load theirs when declared (some tile images or read media paths themselves).
    """
    model_dir = Path(model_dir)
    kwargs = dict(from_pretrained_kwargs or {})
    files = processor_settings_files(model_dir)
    modalities = tuple(getattr(family, "modalities", ()) or ())
    required = family is not None and not getattr(family, "remote_code", False)
    name = getattr(family, "name", "this")
    processors = CheckpointProcessors(chat_template=chat_template_from_files(model_dir))
    if (model_dir / "processor_config.json").is_file():
        settings = read_json(model_dir / "processor_config.json")
        processors.processor_config = {k: v for k, v in settings.items() if k not in NESTED_KEYS}
    processors.processor_class = processor_class_name(model_dir)

    if family is None:  # no family to say which: what the settings files name
        preprocessor_file = model_dir / "preprocessor_config.json"
        preprocessor = read_json(preprocessor_file) if preprocessor_file.is_file() else {}
        image = "processor_config.json (image_processor)" in files.values() or "image_processor_type" in preprocessor
        audio = "processor_config.json (feature_extractor)" in files.values() or (
            "feature_extractor_type" in preprocessor and not image)
        modalities = ("image",) * image + ("audio",) * audio
    if "image" in modalities:
        if "image" in files:
            from transformers import AutoImageProcessor

            try:
                processors.image_processor = AutoImageProcessor.from_pretrained(model_dir, **kwargs)
            except Exception as error:  # a damaged or foreign settings file: the user's checkpoint
                raise _broken(model_dir, "image", files["image"], error) from None
        elif required:
            raise _missing(model_dir, "image", name)
    if "audio" in modalities:
        if "audio" in files:
            from transformers import AutoFeatureExtractor

            try:
                processors.feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir, **kwargs)
            except Exception as error:
                raise _broken(model_dir, "audio", files["audio"], error) from None
        elif required:
            raise _missing(model_dir, "audio", name)
    if has_torchvision() and ("video" in files or _takes_video(processors.processor_class)):
        # transformers' video processors are torchvision-only; without it a video is refused at encode time.
        # Checkpoints saved before video processors existed keep their settings in preprocessor_config.json,
        # which AutoVideoProcessor reads too.
        from transformers import AutoVideoProcessor

        try:
            processors.video_processor = AutoVideoProcessor.from_pretrained(model_dir, **kwargs)
        except Exception as error:
            if "video" in files:
                raise _broken(model_dir, "video", files["video"], error) from None
    return processors


def _takes_video(processor_class: str | None) -> bool:
    import transformers

    base = getattr(transformers, processor_class or "", None)
    return base is not None and "video_processor" in base.get_attributes()


def processor_class_name(model_dir: Path) -> str | None:
    """The processor class AutoProcessor would build: the one the checkpoint names, else its model type's."""
    model_dir = Path(model_dir)
    for name in ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                 "tokenizer_config.json"):
        if (model_dir / name).is_file():
            settings = read_json(model_dir / name)
            nested = [settings.get(key) for key in ("image_processor", "feature_extractor")]
            for candidate in [settings, *[n for n in nested if isinstance(n, dict)]]:
                if isinstance(candidate.get("processor_class"), str):
                    return candidate["processor_class"]
    if (model_dir / "config.json").is_file():
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

        return PROCESSOR_MAPPING_NAMES.get(read_json(model_dir / "config.json").get("model_type"))
    return None


class NoVideoProcessor:
    """Stands in for a torchvision-only video processor that cannot be built here. Some processors read video
    settings when they are built (MiniCPM-V: slice_mode, downsample_mode): those are answered with the image
    processor's, which they share. A video never reaches it: without torchvision one is refused before
    encoding, with a line naming torchvision."""

    def __init__(self, image_processor):
        self._image_processor = image_processor

    def __getattr__(self, name):
        if name.startswith("_"):  # copy and pickle look up dunders on an instance without its fields
            raise AttributeError(name)
        return getattr(self._image_processor, name)

    def __call__(self, *args, **kwargs):
        from swiftlite.video import video_error

        raise UserError(video_error("this checkpoint's processor"))


def build_processor(processor_class: str | None, tokenizer, settings: dict, image_processor=None,
                    feature_extractor=None, video_processor=None):
    """The official processor from the parts already loaded, as ProcessorMixin.from_pretrained assembles it.

    Without torchvision there is no video processor; the processors that insist on one (Qwen2-VL, InternVL,
    LLaVA-OneVision, MiniCPM-V, ...) are built with NoVideoProcessor in its place, and never see a video (one is
    refused before, naming torchvision).
    """
    import inspect

    import transformers

    base = getattr(transformers, processor_class or "", None)
    if base is None:
        raise UserError(f"this transformers ({transformers.__version__}) has no processor class {processor_class!r}, "
                        "which the checkpoint names: upgrade transformers")
    attributes = base.get_attributes()
    parts = {"tokenizer": tokenizer}
    if "image_processor" in attributes:
        parts["image_processor"] = image_processor
    if "feature_extractor" in attributes:
        parts["feature_extractor"] = feature_extractor
    cls = base
    if "video_processor" in attributes:
        parts["video_processor"] = video_processor
        if video_processor is None:
            class ImageOnlyProcessor(base):
                def check_argument_for_proper_class(self, argument_name, argument):
                    if argument_name != "video_processor":
                        return super().check_argument_for_proper_class(argument_name, argument)

            ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = base.__name__
            cls = ImageOnlyProcessor
            if image_processor is not None:
                parts["video_processor"] = NoVideoProcessor(image_processor)
    accepted = set(inspect.signature(base.__init__).parameters)
    kwargs = {key: value for key, value in settings.items() if key in accepted and key not in parts}
    return cls(**parts, **kwargs)
