"""The report of one run directory: header, recipe, learning curves, per-class scores, confusion
matrix, gallery, calibration.

Everything is read from the run directory through its readers (:mod:`mnistkit.runs`): status.json,
env.json, data.json, recipe.yaml, metrics.csv, predictions.npz and gallery.npz. A file the run did
not write (a run made before it existed, a run that failed) turns its sections into a message
that names the command which writes it; the report is still written.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from mnistkit.errors import RunError
from mnistkit.recipe.metrics import format_metric
from mnistkit.report import figures
from mnistkit.report.analysis import ClassScores, class_scores, confused_pairs
from mnistkit.report.calibration import DEFAULT_BINS, reliability
from mnistkit.report.page import Page, Section, render_part
from mnistkit.runs.directory import RunDir
from mnistkit.runs.listing import format_seconds, run_info
from mnistkit.runs.predictions import Predictions, load_predictions

#: The command that writes predictions.npz and gallery.npz for a run made without them.
ADD_PREDICTIONS = "mnistkit eval {run} --checkpoint last"


def run_page(run: RunDir) -> Page:
    """The whole report of one run."""
    facts = RunFacts.read(run)
    sections = [summary_section(facts), recipe_section(facts), curves_section(facts)]
    pred, problem = _predictions(run)
    if pred is None:
        sections += _missing_sections(problem)
    else:
        scores = class_scores(pred.labels, pred.predicted, facts.classes(pred))
        sections += [
            per_class_section(scores, pred),
            confusion_section(scores, pred),
            gallery_section(run, pred, facts),
            calibration_section(pred),
        ]
    subtitle = f"{facts.info.status} · {facts.started_text} · {run.path.resolve()}"
    return Page(title=f"Run {run.name}", subtitle=subtitle, sections=sections)


class RunFacts:
    """What the run directory says about the run, each file read once by its own reader."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.info = run_info(run.path)
        self.status = run.read_status()
        self.recipe = run.read_recipe_dict()
        self.rows = run.read_metrics()
        self.env = _read_json(run.env_path)
        self.data = run.read_data_info() or {}

    @classmethod
    def read(cls, run: RunDir) -> RunFacts:
        return cls(run)

    @property
    def started_text(self) -> str:
        ts = self.info.started
        return dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M") if ts else "start unknown"

    def classes(self, pred: Predictions) -> list[str]:
        """Class names from data.json; their indices where it is missing or does not fit."""
        names = [str(c) for c in self.data.get("classes") or []]
        n = pred.probabilities.shape[1]
        return names if len(names) == n else [str(i) for i in range(n)]


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


# ------------------------------------------------------------------------------ header
def summary_section(facts: RunFacts) -> Section:
    info, status, rows = facts.info, facts.status, facts.rows
    metric = info.best_metric
    best = None
    if info.best is not None:
        best = f"{metric} {format_metric(metric, info.best)} at epoch {info.best_epoch}"
    final = None
    if rows:
        last = rows[-1]
        parts = [
            f"{col} {format_metric(col, last[col])}"
            for col in ("test_acc", "test_loss", "val_acc", "val_loss", "train_acc", "train_loss")
            if last.get(col) is not None
        ]
        final = f"after epoch {last['epoch']}: " + ", ".join(parts)
    selection = _selection(facts)
    epochs = f"{info.epochs_done} of {info.epochs_planned}" if info.epochs_planned else str(info.epochs_done)
    wall = None
    if status.get("started") and status.get("ended"):
        wall = _seconds(float(status["ended"]) - float(status["started"]))
    duration = f"{_seconds(info.seconds)} training" + (f", {wall} in all" if wall else "")
    rows_out = [
        ("name", status.get("name") or facts.recipe.get("name") or facts.run.name),
        (
            "status",
            info.status + (f" ({info.stop_reason})" if info.stop_reason not in (None, info.status) else ""),
        ),
        ("epochs", epochs),
        ("best", best or "-"),
        ("final", final or "- (no epoch finished)"),
        ("duration", duration),
        ("device", _device(facts.env)),
        ("data", _data_text(facts)),
        ("seed", str(facts.env.get("seed", facts.recipe.get("seed", "-")))),
        ("versions", _versions(facts.env)),
    ]
    body = render_part("parts/summary.html.j2", rows=rows_out, selection=selection)
    return Section("summary", "Summary", body)


def _seconds(seconds: float | None) -> str:
    """``4.2 s`` under a minute, else ``m:ss`` / ``h:mm:ss`` as ``mnistkit runs`` shows them."""
    if seconds is not None and seconds < 60:
        return f"{seconds:.1f} s"
    return format_seconds(seconds)


def _selection(facts: RunFacts) -> dict[str, Any]:
    """Which split chose best.pt (and early stopping): said plainly when it was the test set."""
    metric = facts.info.best_metric or "-"
    notes = list(facts.status.get("selected_on_test") or [])
    split = metric.split("_")[0] if "_" in metric else metric
    return {"metric": metric, "split": split, "on_test": split == "test" or bool(notes), "notes": notes}


def _device(env: dict[str, Any]) -> str:
    if not env:
        return "- (no env.json)"
    text = str(env.get("device", "-"))
    if env.get("cuda"):
        text += f" ({env['cuda']})"
    if env.get("threads"):
        text += f", {env['threads']} thread{'s' * (env['threads'] != 1)}"
    world = (env.get("distributed") or {}).get("world_size") or 1
    if world > 1:
        text += f", {world} processes"
    return text


def _versions(env: dict[str, Any]) -> str:
    parts = [f"{k} {env[k]}" for k in ("mnistkit", "torch", "python") if env.get(k)]
    if env.get("git_commit"):
        parts.append(f"commit {str(env['git_commit'])[:12]}")
    return ", ".join(parts) or "-"


def _data_text(facts: RunFacts) -> str:
    data, recipe = facts.data, facts.recipe.get("data") or {}
    dataset = data.get("dataset") or recipe.get("dataset") or "-"
    text = f"{dataset} ({data.get('kind', 'image')})"
    sizes = data.get("samples") or {}
    if sizes:
        text += ": " + ", ".join(f"{n:,} {split}" for split, n in sizes.items() if n is not None)
    classes = data.get("classes") or []
    if classes:
        shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
        text += f"; {len(classes)} classes: {shown}"
    if data.get("in_shape"):
        text += "; input " + "x".join(str(n) for n in data["in_shape"])
    return text


# ------------------------------------------------------------------------------ recipe
def recipe_section(facts: RunFacts) -> Section:
    from mnistkit.runs.listing import flatten

    origins = facts.run.read_origins()
    rows = [
        (key, _yaml_scalar(value), _origin(origins, key) if origins is not None else "")
        for key, value in flatten(facts.recipe).items()
    ]
    note = "" if origins is not None else "where each value came from was not recorded by this run"
    body = render_part("parts/recipe.html.j2", rows=rows, recorded=origins is not None)
    return Section("recipe", "Recipe", body, note=note)


def _origin(origins: dict[str, str], key: str) -> str:
    """Where ``key``'s value was written; a registry name given in short (``loss: cross_entropy``,
    resolved to ``loss.name``) has its parent's place; anything else unlisted is the default."""
    if key in origins:
        return origins[key]
    parent, _, last = key.rpartition(".")
    if last == "name" and parent in origins:
        return origins[parent]
    return "default"


def _yaml_scalar(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


# ------------------------------------------------------------------------------ curves
def curves_section(facts: RunFacts) -> Section:
    if not facts.rows:
        body = render_part("parts/missing.html.j2", text="no epoch finished: metrics.csv has no rows")
        return Section("curves", "Learning curves", body)
    uri = figures.curves_uri(facts.rows, facts.info.best_epoch, facts.info.best_metric)
    alt = "loss, accuracy and learning rate per epoch for the train, validation and test splits"
    note = ""
    if facts.info.best_epoch is not None:
        best = facts.info.best_epoch
        note = f"dotted line: the best epoch ({best}) by {facts.info.best_metric}, kept as best.pt"
    body = render_part("parts/figure.html.j2", uri=uri, alt=alt)
    return Section("curves", "Learning curves", body, note=note)


# ------------------------------------------------------------------------------ predictions
def _predictions(run: RunDir) -> tuple[Predictions | None, str]:
    cmd = ADD_PREDICTIONS.format(run=run.path)
    if not run.predictions_path.is_file():
        return None, (
            f"This run has no {run.PREDICTIONS} (a run made before mnistkit saved its test-set "
            f"predictions, or one that did not finish). `{cmd}` writes it; then run "
            f"`mnistkit report {run.path}` again."
        )
    try:
        return load_predictions(run.predictions_path), ""
    except RunError as exc:
        return None, str(exc)


def _missing_sections(problem: str) -> list[Section]:
    body = render_part("parts/missing.html.j2", text=problem)
    return [
        Section(sid, title, body)
        for sid, title in (
            ("per-class", "Per-class scores"),
            ("confusion", "Confusion matrix"),
            ("gallery", "Gallery"),
            ("calibration", "Calibration"),
        )
    ]


def _model_note(pred: Predictions) -> str:
    model = pred.model
    n = len(pred.labels)
    which = f"{model.get('checkpoint', 'final model')}, epoch {model.get('epoch', '?')}"
    return f"test set, {n:,} samples; model: {which} (predictions.npz)"


def per_class_section(scores: ClassScores, pred: Predictions) -> Section:
    body = render_part("parts/per_class.html.j2", scores=scores)
    return Section("per-class", "Per-class scores", body, note=_model_note(pred) + "; click a header to sort")


def confusion_section(scores: ClassScores, pred: Predictions) -> Section:
    counts = figures.confusion_uri(scores.confusion, scores.classes, normalized=False)
    normalized = figures.confusion_uri(scores.confusion, scores.classes, normalized=True)
    pairs = confused_pairs(scores.confusion, scores.classes)
    body = render_part("parts/confusion.html.j2", counts=counts, normalized=normalized, pairs=pairs)
    return Section("confusion", "Confusion matrix", body, note="rows: true class, columns: predicted class")


def calibration_section(pred: Predictions, bins: int = DEFAULT_BINS) -> Section:
    rel = reliability(pred.probabilities, pred.labels, bins)
    body = render_part(
        "parts/calibration.html.j2", uri=figures.reliability_uri(rel), ece=100 * rel.ece, bins=bins,
        samples=len(pred.labels),
    )  # fmt: skip
    return Section("calibration", "Calibration", body)


def gallery_section(run: RunDir, pred: Predictions, facts: RunFacts) -> Section:
    from mnistkit.report.gallery import gallery_body

    return Section("gallery", "Gallery", gallery_body(run, pred, facts.classes(pred), ADD_PREDICTIONS))
