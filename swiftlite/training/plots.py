"""Loss curves from logging.jsonl: images/train_loss.png and images/eval_loss.png (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path


def read_logs(logging_file: Path) -> list[dict]:
    if not Path(logging_file).is_file():
        return []
    return [json.loads(line) for line in Path(logging_file).read_text().splitlines() if line.strip()]


def plot_losses(logging_file: Path, images_dir: Path) -> list[Path]:
    """One PNG per curve found in the logs (train loss always when logged; eval loss when evaluated)."""
    # matplotlib's object API with the Agg canvas: no pyplot, no GUI backend (and a second less to import).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    logs = read_logs(logging_file)
    written = []
    curves = (("loss", "train_loss.png", "train loss"), ("eval_loss", "eval_loss.png", "eval loss"))
    for key, file_name, title in curves:
        points = [(_step(log), log[key]) for log in logs if key in log and _step(log) is not None]
        if not points:
            continue
        images_dir.mkdir(parents=True, exist_ok=True)
        figure = Figure(figsize=(8, 5))
        FigureCanvasAgg(figure)
        axes = figure.subplots()
        steps, values = zip(*points)
        axes.plot(steps, values, marker="o" if len(points) < 30 else None, color="#1f77b4")
        axes.set_xlabel("global step")
        axes.set_ylabel(key)
        axes.set_title(title)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(images_dir / file_name, dpi=100)
        written.append(images_dir / file_name)
    return written


def _step(log: dict) -> int | None:
    progress = log.get("global_step/max_steps")
    return int(progress.split("/")[0]) if isinstance(progress, str) else None
