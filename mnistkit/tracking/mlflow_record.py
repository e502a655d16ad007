"""A run directory logged to MLflow: the one module that talks to MLflow (no torch).

Everything sent comes from the run directory's own files (recipe.yaml, metrics.csv, env.json,
status.json, plots/), so live tracking (:mod:`mnistkit.tracking.trackers`) and
``mnistkit track RUN_DIR`` (after the fact, or after the server was down) log the same thing.
Sending is idempotent: the MLflow run is found again by the id kept in the run directory
(``mlflow.json``) or by its ``mnistkit.run_uid`` tag, and a metric point is sent only for epochs
past the last step MLflow already has for that metric.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistkit.errors import mask_credentials
from mnistkit.fsutil import atomic_write_text
from mnistkit.recipe.sections import MlflowSettings
from mnistkit.runs.directory import RunDir, run_process_alive

STATE_FILE = "mlflow.json"  # in the run directory: the MLflow run id per tracking URI
UID_TAG = "mnistkit.run_uid"
#: status.json's status -> MLflow's run status.
STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED", "running": "RUNNING"}
ARTIFACT_FILES = {"recipe": RunDir.RECIPE, "metrics": RunDir.METRICS, "env": RunDir.ENV, "model": "best.pt"}
ONNX_FILE = "export/model.onnx"  # where `mnistkit export` writes by default
ONNX_ARTIFACT = "onnx"  # the MLflow ONNX model's folder in the run's artifacts
#: metrics.csv columns logged as series (step = epoch); loss/acc ones also get final_ and best_.
SUMMARIZED = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


mask = mask_credentials  # scheme://user:password@host -> scheme://user:***@host


def resolve_uri(recipe_uri: str | None, given: str | None = None) -> str:
    """``--to``, then $MLFLOW_TRACKING_URI, then the recipe's train.mlflow.tracking_uri, then
    MLflow's own default (MLflow's convention, with the explicit option first)."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or recipe_uri
    if uri:
        return uri
    import mlflow

    return mlflow.get_tracking_uri()


def _http_defaults() -> None:
    """No URL printed by MLflow itself; a server that is down fails a request at once
    instead of MLflow's 7 retries with back-off (minutes of a stalled training loop); the
    user's own retry and timeout settings win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # MLflow prints "View run ... at: URL" with the URL's password; mnistkit says where, masked.
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    # A new database store says "Creating initial MLflow database tables..." and "Updating
    # database tables" at INFO on stderr, in the middle of a run's display: warnings only.
    # (The store is created lazily, at the client's first request: hence for the process.)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """The resolved recipe as MLflow params: dotted keys, lists and numbers as JSON text."""
    out: dict[str, str] = {}
    if isinstance(d, dict) and (d or not prefix):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    out[prefix] = d if isinstance(d, str) else json.dumps(d)
    return out


@dataclass
class Expected:
    """What the MLflow run of a run directory must hold, read from its files."""

    run: RunDir
    settings: MlflowSettings
    params: dict[str, str]
    tags: dict[str, str]
    rows: list[dict[str, Any]]
    status: str  # MLflow's
    started: float | None
    ended: float | None
    summary: dict[str, float] = field(default_factory=dict)  # finished runs: final_, best_
    dataset: tuple[str, str, str] | None = None  # name, digest, source

    @classmethod
    def read(cls, run: RunDir) -> Expected:
        recipe = run.read_recipe_dict()
        settings = MlflowSettings.model_validate((recipe.get("train") or {}).get("mlflow") or {})
        status = run.read_status()
        env = _read_json(run.env_path)
        data = run.read_data_info() or {}
        params = flatten(recipe)
        folder = data.get("data_dir") or (recipe.get("data") or {}).get("root")
        params["data_folder"] = str(folder) if folder else "null"  # null: no files (or the cache)
        state = status.get("status", "running")
        if state == "running" and not run_process_alive(status.get("pid")):
            state = "interrupted"  # killed without a word: MLflow's KILLED
        world = (env.get("distributed") or {}).get("world_size", 1)
        best_metric = str(status.get("best_metric") or "")
        tags = {
            "mnistkit.version": str(env.get("mnistkit", "")),
            "mnistkit.git_commit": str(env.get("git_commit") or "unknown"),
            "mnistkit.command": mask(str(status.get("command_line") or "")),
            "mnistkit.run_dir": str(run.path.resolve()),
            "mnistkit.selection_split": best_metric.split("_")[0] or "unknown",
            "mnistkit.best_metric": best_metric,
            "mnistkit.world_size": str(world),
            **settings.tags,
        }
        rows = run.read_metrics() if run.metrics_path.is_file() else []
        out = cls(
            run, settings, params, tags, rows, STATUS[state], status.get("started"), status.get("ended")
        )
        if state == "finished" and rows:
            out.summary = _summary(rows, status)
        if env:
            out.dataset = (str((recipe.get("data") or {}).get("dataset")), *dataset_digest(env))
        return out


def onnx_signature(model: Any) -> Any:
    """MLflow's ModelSignature of an ONNX graph: a TensorSpec per input and output (name,
    dtype, shape; a named dimension such as the batch is -1)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec
    from onnx.helper import tensor_dtype_to_np_dtype

    def specs(values: Any) -> Schema:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            out.append(TensorSpec(tensor_dtype_to_np_dtype(t.elem_type), shape, v.name))
        return Schema(out)

    return ModelSignature(inputs=specs(model.graph.input), outputs=specs(model.graph.output))


def dataset_digest(env: dict[str, Any]) -> tuple[str, str]:
    """(digest, source) of the data a run read: the hashes env.json lists for its files (none
    for a dataset shipped in a package: its source then), 32 hex digits."""
    source = str(env.get("data_source") or "")
    seen = {"source": source, "files": env.get("data_files") or {}}
    return hashlib.sha256(json.dumps(seen, sort_keys=True).encode()).hexdigest()[:32], source


def _summary(rows: list[dict[str, Any]], status: dict[str, Any]) -> dict[str, float]:
    """final_<column> (last epoch), best_<column> (best epoch: max accuracy, min loss),
    best_epoch (the epoch of best.pt), train_seconds."""
    out: dict[str, float] = {}
    for key in SUMMARIZED:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[f"final_{key}"] = float(values[-1])
            out[f"best_{key}"] = float(max(values) if key.endswith("acc") else min(values))
    if status.get("best_epoch") is not None:
        out["best_epoch"] = float(status["best_epoch"])
    out["train_seconds"] = float(sum(r.get("seconds") or 0 for r in rows))
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


class MlflowRecord:
    """One run directory and its MLflow run at one tracking URI."""

    def __init__(self, run: RunDir, uri: str | None = None, parent_run_id: str | None = None) -> None:
        _http_defaults()
        from mlflow.tracking import MlflowClient

        self.run = run
        self.expected = Expected.read(run)
        self.uri = resolve_uri(self.expected.settings.tracking_uri, uri)
        self.shown_uri = mask(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.have: dict[str, int] = {}  # metric -> last step MLflow has
        self.sent = 0  # metric points sent by this object

    # ------------------------------------------------------------------ state file
    def _state(self) -> dict[str, Any]:
        return _read_json(self.run.path / STATE_FILE)

    def _write_state(self, **fields: Any) -> None:
        state = self._state()
        state.setdefault("uid", uuid.uuid4().hex)
        runs = state.setdefault("runs", {})
        runs.setdefault(self.shown_uri, {}).update(fields)
        atomic_write_text(self.run.path / STATE_FILE, json.dumps(state, indent=2) + "\n")

    def uid(self) -> str:
        state = self._state()
        if "uid" not in state:
            self._write_state()
            state = self._state()
        return str(state["uid"])

    def note_pending(self, why: str | None) -> None:
        """Say in mlflow.json that this URI is behind (why), or, with None, that it is not."""
        self._write_state(pending=mask(why) if why else None)

    # ------------------------------------------------------------------ open
    def open(self) -> str:
        """Find (or create) the MLflow run; log params, tags and the dataset; mark it running
        unless the run directory says it ended. Returns the MLflow run id."""
        exp = self.expected
        uid = self.uid()
        known = (self._state().get("runs") or {}).get(self.shown_uri, {}).get("run_id")
        found = self._find(uid, known)
        if found is None:
            experiment = self.client.get_experiment_by_name(exp.settings.experiment)
            exp_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment(exp.settings.experiment)
            )
            tags = {UID_TAG: uid}
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            created = self.client.create_run(
                exp_id,
                start_time=int(exp.started * 1000) if exp.started else None,
                tags=tags,
                run_name=exp.settings.run_name or self.run.path.name,
            )
            found = created
        self.run_id, self.experiment_id = found.info.run_id, found.info.experiment_id
        self._write_state(run_id=self.run_id, experiment_id=self.experiment_id)
        if found.info.status != "RUNNING" and exp.status == "RUNNING":
            self.client.update_run(self.run_id, status="RUNNING")  # resumed
        self._log_params(found.data.params)
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in exp.tags.items()])
        if exp.dataset is not None:
            from mlflow.entities import Dataset, DatasetInput

            name, digest, source = exp.dataset
            data = Dataset(name=name, digest=digest, source_type="local", source=source)
            self.client.log_inputs(self.run_id, [DatasetInput(dataset=data)])
        for key in {k for r in exp.rows for k in r if k != "epoch"}:
            history = self.client.get_metric_history(self.run_id, key)
            self.have[key] = max((m.step for m in history), default=0)
        return self.run_id

    def _find(self, uid: str, known: str | None) -> Any:
        """The MLflow run of this run directory: by the stored id, else by the uid tag."""
        if known:
            try:
                run = self.client.get_run(known)
                if run.data.tags.get(UID_TAG) == uid and run.info.lifecycle_stage == "active":
                    return run
            except Exception as exc:  # another server, or the run was deleted there
                if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(exc, "error_code", exc)):
                    raise
        experiment = self.client.get_experiment_by_name(self.expected.settings.experiment)
        if experiment is None:
            return None
        runs = self.client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{UID_TAG}` = '{uid}'", max_results=1
        )
        return runs[0] if runs else None

    def _log_params(self, existing: dict[str, str]) -> None:
        """Params not yet there; a value changed on --resume (epochs) becomes a tag
        ``resumed_with.KEY``: MLflow params cannot change."""
        from mlflow.entities import Param, RunTag

        new = {k: v for k, v in self.expected.params.items() if k not in existing}
        changed = {
            f"resumed_with.{k}": v
            for k, v in self.expected.params.items()
            if k in existing and existing[k] != v
        }
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])
        if changed:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in changed.items()])

    # ------------------------------------------------------------------ metrics
    def log_rows(self, rows: list[dict[str, Any]]) -> int:
        """Each metrics.csv value whose epoch is past what MLflow has for that metric: one
        point per epoch, step = epoch. Returns how many points were sent."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [
            Metric(key, float(value), now, int(row["epoch"]))
            for row in rows
            for key, value in row.items()
            if key != "epoch" and value is not None and int(row["epoch"]) > self.have.get(key, 0)
        ]
        for i in range(0, len(points), 1000):
            self.client.log_batch(self.run_id, metrics=points[i : i + 1000])
        for p in points:
            self.have[p.key] = max(self.have.get(p.key, 0), p.step)
        self.sent += len(points)
        return len(points)

    # ------------------------------------------------------------------ close
    def close(self) -> None:
        """Everything the run directory now says: the rest of the metrics, final/best values of
        a finished run, the artifacts, the status and end time."""
        self.expected = exp = Expected.read(self.run)
        self.log_rows(exp.rows)
        if exp.summary:
            from mlflow.entities import Metric

            have = self.client.get_run(self.run_id).data.metrics
            step = int(exp.rows[-1]["epoch"])
            now = int(time.time() * 1000)
            points = [Metric(k, v, now, step) for k, v in exp.summary.items() if have.get(k) != v]
            if points:
                self.client.log_batch(self.run_id, metrics=points)
        for name in exp.settings.artifacts:
            if name == "plots":
                if self.run.plots_dir.is_dir() and any(self.run.plots_dir.iterdir()):
                    self.client.log_artifacts(self.run_id, str(self.run.plots_dir), "plots")
                continue
            if name == "onnx":
                if (self.run.path / ONNX_FILE).is_file():
                    self._log_onnx(self.run.path / ONNX_FILE)
                continue
            path = self.run.path / ARTIFACT_FILES[name]
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), "model" if name == "model" else None)
        if exp.status != "RUNNING":
            ended = int(exp.ended * 1000) if exp.ended else None
            self.client.set_terminated(self.run_id, exp.status, end_time=ended)
        self.note_pending(None)

    def _log_onnx(self, path: Path) -> None:
        """The exported ONNX file as an MLflow ONNX model (MLmodel, model.onnx, requirements),
        with the signature read from the graph's inputs and outputs."""
        import tempfile
        from importlib.metadata import version

        import mlflow.onnx
        import onnx

        model = onnx.load(str(path))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / ONNX_ARTIFACT
            mlflow.onnx.save_model(
                model,
                str(folder),
                signature=onnx_signature(model),
                # given, not inferred: inferring loads the model in a child process
                pip_requirements=[f"onnx=={version('onnx')}", f"onnxruntime=={version('onnxruntime')}"],
                save_as_external_data=False,
            )
            self.client.log_artifacts(self.run_id, str(folder), ONNX_ARTIFACT)

    def sync(self) -> int:
        """Open, then close: the whole run directory sent (``mnistkit track``). Returns the
        metric points that were missing."""
        self.open()
        before = self.sent
        self.close()
        return self.sent - before


# ---------------------------------------------------------------------- sweeps
STUDY_TAG = "mnistkit.study"


def sweep_parent(
    settings: MlflowSettings, study_name: str, known: str | None, tags: dict[str, str]
) -> tuple[str, str]:
    """The parent MLflow run of a sweep's study: ``known`` (the id kept in the study's storage,
    which every worker and every continuation reads) when it is there, else a new one.
    Returns (run id, the URI shown, masked)."""
    _http_defaults()
    from mlflow.tracking import MlflowClient

    uri = resolve_uri(settings.tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    if known:
        try:
            if client.get_run(known).info.lifecycle_stage == "active":
                client.update_run(known, status="RUNNING")  # the sweep continues
                return known, mask(uri)
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(exc, "error_code", exc)):
                raise
    experiment = client.get_experiment_by_name(settings.experiment)
    exp_id = experiment.experiment_id if experiment else client.create_experiment(settings.experiment)
    run = client.create_run(exp_id, tags={STUDY_TAG: study_name, **tags}, run_name=f"sweep {study_name}")
    return run.info.run_id, mask(uri)


def tag_runs(tags: dict[str, dict[str, str | None]], uri: str | None = None) -> None:
    """Set (or, with None, delete) tags on MLflow runs: keyed by run id."""
    _http_defaults()
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resolve_uri(uri))
    for run_id, values in tags.items():
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in values.items() if v is not None])
        have = client.get_run(run_id).data.tags
        for k in [k for k, v in values.items() if v is None and k in have]:
            client.delete_tag(run_id, k)


def run_id_of(run: RunDir, uri: str | None) -> str | None:
    """The MLflow run id kept in a run directory for the tracking URI now in effect."""
    runs = _read_json(run.path / STATE_FILE).get("runs") or {}
    return (runs.get(mask(resolve_uri(uri))) or {}).get("run_id")


def end_run(run_id: str, status: str, uri: str | None = None) -> None:
    """Set a run's end status (a sweep's parent)."""
    _http_defaults()
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=resolve_uri(uri)).set_terminated(run_id, status)
