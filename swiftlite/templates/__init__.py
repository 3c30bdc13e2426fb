"""Template registry: template type name -> TemplateMeta, and `get_template` to bind one to a tokenizer."""

from __future__ import annotations

import difflib

from swiftlite.templates.base import IGNORE_INDEX, Template, TemplateError, TemplateMeta
from swiftlite.templates.llava import LLAVA_1_5_TEMPLATE
from swiftlite.templates.qwen2_vl import QWEN2_VL_TEMPLATE

TEMPLATES: dict[str, TemplateMeta] = {meta.name: meta for meta in (QWEN2_VL_TEMPLATE, LLAVA_1_5_TEMPLATE)}


def get_template_meta(template_type: str) -> TemplateMeta:
    if template_type in TEMPLATES:
        return TEMPLATES[template_type]
    close = difflib.get_close_matches(template_type, list(TEMPLATES), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise TemplateError(f"unknown template type {template_type!r}.{hint} Run `mm list` to see all templates.")


def get_template(template_type: str, tokenizer, **settings) -> Template:
    """Bind a template to a tokenizer. Processors attached by `get_model_tokenizer` are picked up from it."""
    for name in ("image_processor", "feature_extractor", "processor_config", "model_config"):
        if name not in settings and getattr(tokenizer, f"swiftlite_{name}", None) is not None:
            settings[name] = getattr(tokenizer, f"swiftlite_{name}")
    return Template(get_template_meta(template_type), tokenizer, **settings)


__all__ = ["IGNORE_INDEX", "TEMPLATES", "Template", "TemplateError", "TemplateMeta", "get_template", "get_template_meta"]
