"""List model types, templates, families and named datasets: hub ids, architecture, modalities, template.

`mm list` shows every model type; `mm list families` one row per family with what it supports;
`mm list templates` the template types; `mm list datasets` the names `--dataset` accepts.
"""

from __future__ import annotations

from typing import Annotated

import typer

from swiftlite.options import opt

WHAT = ("models", "families", "templates", "datasets")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def models_table() -> str:
    from swiftlite.models import MODEL_TYPES

    rows = [
        [m.name, m.family.name, m.family.architectures[0], "+".join(m.family.modalities), m.template_type,
         m.modelscope_id, m.hf_id]
        for m in MODEL_TYPES.values()
    ]
    return _table(["model_type", "family", "architecture", "modalities", "template", "modelscope", "huggingface"], rows)


def families_table() -> str:
    from swiftlite.models import FAMILIES

    rows = [
        [f.name, "+".join(f.modalities), yes_no(f.multi_image), yes_no(f.multi_turn), yes_no(f.video),
         yes_no("audio" in f.modalities), yes_no(f.grounding), yes_no(f.remote_code), yes_no(f.tested_offline)]
        for f in FAMILIES.values()
    ]
    return _table(["family", "modalities", "multi-image", "multi-turn", "video", "audio", "grounding",
                   "remote code", "tested offline"], rows)


def templates_table() -> str:
    from swiftlite.models import MODEL_TYPES
    from swiftlite.templates import TEMPLATES

    rows = []
    for meta in TEMPLATES.values():
        users = sorted({m.family.name for m in MODEL_TYPES.values() if m.template_type == meta.name})
        media = "+".join(kind for kind, token in (("image", meta.image_token), ("audio", meta.audio_token)) if token)
        rows.append([meta.name, media or "text", meta.end_of_turn or "eos (appended)", ", ".join(users)])
    return _table(["template", "media", "end of turn", "families"], rows)


def datasets_table() -> str:
    from swiftlite.dataset_registry import DATASETS

    rows = [
        [d.name, d.task, d.modalities, f"{d.rows:,}", "+".join(d.splits), "/".join(d.subsets), d.licence,
         d.modelscope_id or "-", d.hf_id or "-"]
        for d in DATASETS.values()
    ]
    return _table(["dataset", "task", "media", "rows", "splits", "subsets", "licence", "modelscope",
                   "huggingface"], rows)


def list_command(
    what: Annotated[str, typer.Argument(help="models (default), families, templates or datasets")] = "models",
    family: Annotated[str | None, opt("family", "Only rows of this family.")] = None,
) -> None:
    if what not in WHAT:
        from swiftlite.errors import UserError

        raise UserError(f"mm list {what}: expected one of {', '.join(WHAT)}")
    table = {"models": models_table, "families": families_table, "templates": templates_table,
             "datasets": datasets_table}[what]()
    if family:
        table = "\n".join(line for i, line in enumerate(table.splitlines()) if i < 2 or f" {family} " in f" {line} ")
    print(table)
