"""Template registry: template type name -> TemplateMeta, and `get_template` to bind one to a tokenizer.

Each family's template is a module-level TemplateMeta in its own file in this package; modules are
discovered, so adding a template means adding a file.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil

from swiftlite.templates.base import IGNORE_INDEX, Template, TemplateError, TemplateMeta

TEMPLATES: dict[str, TemplateMeta] = {}
for _info in pkgutil.iter_modules(__path__):
    if _info.name in ("base", "meta"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _value in vars(_module).values():
        if isinstance(_value, TemplateMeta):
            if _value.name in TEMPLATES and TEMPLATES[_value.name] is not _value:
                raise ValueError(f"template {_value.name!r} defined twice")
            TEMPLATES[_value.name] = _value


def get_template_meta(template_type: str) -> TemplateMeta:
    if template_type in TEMPLATES:
        return TEMPLATES[template_type]
    close = difflib.get_close_matches(template_type, list(TEMPLATES), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise TemplateError(f"unknown template type {template_type!r}.{hint} Run `mm list templates` to see all templates.")


def get_template(template_type: str, tokenizer, **settings) -> Template:
    """Bind a template to a tokenizer. The processors `load_tokenizer` attached to it are picked up from it."""
    processors = getattr(tokenizer, "swiftlite_processors", None)
    if processors is not None:
        for name in ("image_processor", "feature_extractor", "video_processor", "processor_class", "processor_config"):
            if name not in settings and getattr(processors, name) is not None:
                settings[name] = getattr(processors, name)
    if "model_config" not in settings and getattr(tokenizer, "swiftlite_model_config", None) is not None:
        settings["model_config"] = tokenizer.swiftlite_model_config
    return Template(get_template_meta(template_type), tokenizer, **settings)


__all__ = ["IGNORE_INDEX", "TEMPLATES", "Template", "TemplateError", "TemplateMeta", "get_template", "get_template_meta"]
