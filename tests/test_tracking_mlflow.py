"""MLflow tracking (docs/tracking.md), read back through MlflowClient, the way a team sees it.

What a run must hold is computed here from the run directory's own files (recipe.yaml flattened
to dotted keys, every metrics.csv column, env.json), independently of mnistkit's MLflow code.
Two stores: the embedded SQLite store, and a real `mlflow server` process (SQLite backend,
started at import of this module on a free loopback port, so it boots while the embedded-store
runs train). Runs are quickstart-sized (8x8 digits, 3 epochs) and trained once per module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, invoke
from pg import postgres

from mnistkit.runs.directory import RunDir

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra: pip install 'mnistkit[mlflow]'")
from mlflow.tracking import MlflowClient  # noqa: E402

QUICK = REPO / "recipes" / "quickstart.yaml"
EPOCHS = 3
SECRET = "pw-s3cr3t-d0n0tprint"
TRACK = ["--set", f"epochs={EPOCHS}", "--set", "expect=null", "--progress", "plain", "--track", "mlflow"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat(d: Any, prefix: str = "") -> dict[str, str]:
    """The recipe as params: dotted keys; strings as they are, anything else as JSON."""
    if isinstance(d, dict) and (d or not prefix):
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: d if isinstance(d, str) else json.dumps(d)}


def one_run(client: MlflowClient, run_dir: Path) -> Any:
    """The single MLflow run tagged with this run directory (by search: not the stored id)."""
    runs = [
        r
        for exp in client.search_experiments()
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("mnistkit.run_dir") == str(run_dir.resolve())
    ]
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def said(output: str) -> str:
    """The output with its lines joined (the display wraps at 80 columns)."""
    return " ".join(output.split())


def series(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        out |= artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def assert_complete(client: MlflowClient, run_dir: Path) -> Any:
    """The MLflow run of ``run_dir`` holds exactly what its files say (see module doc)."""
    run = RunDir(run_dir)
    rec = one_run(client, run_dir)
    recipe = yaml.safe_load(run.recipe_path.read_text())
    env = json.loads(run.env_path.read_text())
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert rec.info.status == "FINISHED"
    assert rec.data.params == {**flat(recipe), "data_folder": "null"}
    for key in [k for k in rows[0] if k != "epoch" and rows[0][k] is not None]:
        assert series(client, rec.info.run_id, key) == [(r["epoch"], r[key]) for r in rows], key
    assert rec.data.metrics["best_test_acc"] == max(r["test_acc"] for r in rows)
    assert rec.data.metrics["final_test_loss"] == rows[-1]["test_loss"]
    tags = rec.data.tags
    assert tags["mnistkit.version"] == env["mnistkit"]
    assert tags["mnistkit.world_size"] == "1"
    assert tags["mnistkit.selection_split"] == "test"  # no val_split: best.pt is chosen on test
    command = json.loads(run.status_path.read_text())["command_line"]
    assert command and tags["mnistkit.command"] == command  # (here: pytest's; in-process runs)
    (ds,) = rec.inputs.dataset_inputs
    assert ds.dataset.name == "digits" and len(ds.dataset.digest) == 32
    files = {"recipe.yaml", "metrics.csv", "env.json"} | {f"plots/{p.name}" for p in run.plots_dir.iterdir()}
    assert artifacts(client, rec.info.run_id) == files  # and no checkpoint: never by default
    return rec


# --------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real `mlflow server` on a free loopback port; restartable on the same store. Its
    backend store is PostgreSQL (what a team runs; see tests/pg.py) where the PostgreSQL tests
    can start one, else SQLite."""
    base = tmp_path_factory.mktemp("server")
    info: dict[str, Any] = {"base": base}
    stack = ExitStack()
    try:
        sock = stack.enter_context(postgres("mlflow"))
        info["backend"] = f"postgresql+psycopg://postgres@/mlflow?host={sock}"
    except pytest.skip.Exception as why:  # no PostgreSQL binaries here
        info["backend"] = f"sqlite:///{base / 'mlflow.db'}"
        info["no_postgres"] = str(why)

    def start() -> None:
        port = free_port()
        log = open(base / f"server-{port}.log", "w")  # noqa: SIM115
        info["proc"] = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", info["backend"],
             "--artifacts-destination", str(base / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, cwd=base,
            start_new_session=True,  # its own group: the server's worker processes die with it
            # no job runner (a dozen huey processes for GenAI jobs: nothing a tracked run uses)
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )  # fmt: skip
        info["uri"] = f"http://127.0.0.1:{port}"
        info["port"] = port

    def wait() -> str:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert info["proc"].poll() is None, (base / f"server-{info['port']}.log").read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", info["port"]), timeout=1):
                    return info["uri"]
            except OSError:
                time.sleep(0.25)
        raise AssertionError("mlflow server did not start")

    def stop() -> None:
        os.killpg(info["proc"].pid, signal.SIGKILL)
        info["proc"].wait()

    info.update(start=start, wait=wait, stop=stop)
    with stack:
        start()
        yield info
        stop()


@pytest.fixture(scope="module", autouse=True)
def _server_boots_early(server: dict[str, Any]) -> None:
    """Module-scoped and autouse: the server process starts before the first test runs."""


def tracked(args: list[Any], env: dict[str, str], cwd: Path) -> Any:
    """``mnistkit ARGS`` in this process with ``env`` set (and put back after)."""
    old = {k: os.environ.get(k) for k in env}
    here = Path.cwd()
    os.environ.update(env)
    os.chdir(cwd)  # MLflow's embedded store keeps artifacts under ./mlruns
    try:
        return invoke(*args)
    finally:
        os.chdir(here)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- embedded store
@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run stopped by Ctrl-C in epoch 2, then resumed to the end, on the embedded store."""
    base = tmp_path_factory.mktemp("embedded")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    run = base / "run"
    env = {"MLFLOW_TRACKING_URI": uri, "MNISTKIT_KILL_AT": "2:3:INT"}
    first = tracked(["run", QUICK, *TRACK, "--out", run], env, base)
    assert first.exit_code == 130, first.output
    client = MlflowClient(uri)
    rec = one_run(client, run)
    stopped = {
        "status": rec.info.status,
        "test_acc": series(client, rec.info.run_id, "test_acc"),
        "run_id": rec.info.run_id,
    }
    env["MNISTKIT_KILL_AT"] = ""
    resumed = tracked(["run", "--resume", run, "--progress", "plain"], env, base)
    assert resumed.exit_code == 0, resumed.output
    return {"uri": uri, "run": run, "stopped": stopped, "client": client, "output": resumed.output}


def test_a_stopped_run_is_killed_in_mlflow_and_resume_continues_the_same_run(
    embedded: dict[str, Any],
) -> None:
    stopped = embedded["stopped"]
    assert stopped["status"] == "KILLED"
    assert [step for step, _ in stopped["test_acc"]] == [1]  # epoch 2 was redone, not sent twice
    rec = assert_complete(embedded["client"], embedded["run"])  # steps 1..3, each once
    assert rec.info.run_id == stopped["run_id"]
    state = json.loads((embedded["run"] / "mlflow.json").read_text())
    assert rec.info.run_id in json.dumps(state)


def test_track_after_the_fact_duplicates_nothing(embedded: dict[str, Any]) -> None:
    for _ in range(2):
        res = tracked(["track", embedded["run"]], {"MLFLOW_TRACKING_URI": embedded["uri"]}, REPO)
        assert res.exit_code == 0, res.output
        assert "0 metric points were missing" in said(res.output)
    assert_complete(embedded["client"], embedded["run"])


def test_track_refuses_a_run_that_is_still_training(
    embedded: dict[str, Any], tmp_path: Path, live_pid: int
) -> None:
    run = tmp_path / "busy"
    shutil.copytree(embedded["run"], run, ignore=shutil.ignore_patterns("mlflow.json"))
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "status": "running", "pid": live_pid}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = tracked(["track", run], {"MLFLOW_TRACKING_URI": uri}, tmp_path)
    assert res.exit_code != 0, res.output
    assert f"still running (process {live_pid})" in said(res.output), res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "mlflow.db").exists() or not MlflowClient(uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri).search_experiments()]
    )


def test_a_new_embedded_store_says_nothing_at_info_level(
    embedded: dict[str, Any], cli, tmp_path: Path
) -> None:
    run = tmp_path / "quiet"
    shutil.copytree(embedded["run"], run, ignore=shutil.ignore_patterns("mlflow.json"))
    res = cli("track", run, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'new.db'}"}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "tracked" in res.stdout
    assert "INFO" not in res.stderr and "database tables" not in res.stderr, res.stderr


# --------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def live(server: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two runs against the server: one live with a password in the URI; one whose server is
    unreachable from the start (a closed port), then sent with `mnistkit track --to`."""
    base = tmp_path_factory.mktemp("live")
    uri = server["wait"]()
    with_password = uri.replace("http://", f"http://alice:{SECRET}@")
    env = {"MLFLOW_TRACKING_URI": with_password}
    res = tracked(["run", QUICK, *TRACK, "--out", base / "live"], env, base)
    assert res.exit_code == 0, res.output
    closed = f"http://bob:{SECRET}@127.0.0.1:{free_port()}"
    down = tracked(["run", QUICK, *TRACK, "--out", base / "down"], {"MLFLOW_TRACKING_URI": closed}, base)
    # The server killed mid-run: a test hook kills the real process once epoch 1 is logged.
    from mnistkit.tracking import mlflow_record

    send = mlflow_record.MlflowRecord.log_rows

    def send_then_kill(self: Any, rows: list[dict[str, Any]]) -> int:
        sent = send(self, rows)
        if rows and rows[-1]["epoch"] == 1:
            server["stop"]()
        return sent

    mlflow_record.MlflowRecord.log_rows = send_then_kill  # type: ignore[method-assign]
    try:
        killed = tracked(["run", QUICK, *TRACK, "--out", base / "killed"], env, base)
    finally:
        mlflow_record.MlflowRecord.log_rows = send  # type: ignore[method-assign]
    server["start"]()  # the same store, another port: found again by the run's uid tag
    return {"uri": server["wait"](), "base": base, "live": res.output, "down": down, "killed": killed}


def test_a_run_logged_live_to_a_server_is_complete_and_no_password_is_kept(live: dict[str, Any]) -> None:
    assert_complete(MlflowClient(live["uri"]), live["base"] / "live")
    assert "alice:***@" in live["live"]  # where it logs is said, masked
    for path in (live["base"] / "live").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in live["live"]


def test_the_server_keeps_runs_in_its_postgresql_backend_store(
    live: dict[str, Any], server: dict[str, Any]
) -> None:
    if "no_postgres" in server:
        pytest.skip(server["no_postgres"])
    import psycopg

    rec = one_run(MlflowClient(live["uri"]), live["base"] / "live")
    conninfo = server["backend"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:  # the database itself, not through MLflow
        rows = conn.execute(
            "SELECT r.status, count(m.key) FROM runs r JOIN metrics m ON m.run_uuid = r.run_uuid "
            "WHERE r.run_uuid = %s GROUP BY r.status",
            (rec.info.run_id,),
        ).fetchall()
    metrics = RunDir(live["base"] / "live").read_metrics()
    points = sum(v is not None for r in metrics for k, v in r.items() if k != "epoch")
    assert rows and rows[0][0] == "FINISHED" and rows[0][1] >= points


def test_a_server_killed_mid_run_then_track_completes_the_record(live: dict[str, Any]) -> None:
    killed, run = live["killed"], live["base"] / "killed"
    assert killed.exit_code == 0, killed.output
    assert said(killed.output).count("could not log to") == 1
    client = MlflowClient(live["uri"])
    assert series(client, one_run(client, run).info.run_id, "test_acc")[-1][0] == 1  # only epoch 1
    for _ in range(2):
        res = tracked(["track", run, "--to", live["uri"]], {}, REPO)
        assert res.exit_code == 0, res.output
    assert "0 metric points were missing" in said(res.output)
    assert_complete(client, run)


def test_an_unreachable_server_costs_nothing_and_track_completes_the_record(live: dict[str, Any]) -> None:
    down, run = live["down"], live["base"] / "down"
    assert down.exit_code == 0, down.output
    assert len(RunDir(run).read_metrics()) == EPOCHS
    assert said(down.output).count("could not log to") == 1  # said once
    assert "track" in down.output and SECRET not in down.output
    state = json.loads((run / "mlflow.json").read_text())
    assert SECRET not in json.dumps(state) and any(r.get("pending") for r in state["runs"].values())
    for _ in range(2):  # twice: the second finds the run by its tag and sends nothing
        res = tracked(["track", run, "--to", live["uri"]], {}, REPO)
        assert res.exit_code == 0, res.output
    assert "0 metric points were missing" in said(res.output)
    assert_complete(MlflowClient(live["uri"]), run)


# --------------------------------------------------------------------------- without mlflow
#: sitecustomize for a child Python in which mlflow cannot be imported (as if not installed).
_NO_MLFLOW = """
import sys
class _NoMlflow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mlflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoMlflow())
"""


def test_validate_without_mlflow_says_how_to_install_it(tmp_path: Path, cli) -> None:
    (tmp_path / "sitecustomize.py").write_text(_NO_MLFLOW)
    recipe = tmp_path / "tracked.yaml"
    recipe.write_text(f"base: {QUICK}\ntrain:\n  track: [mlflow]\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    res = cli("validate", recipe, env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    text = said(res.stderr)
    assert f"{recipe}:3:10: train.track:" in text and "pip install 'mnistkit[mlflow]'" in text
    assert "Traceback" not in res.stderr
    res = cli("validate", QUICK, env=env)  # a recipe that does not track needs no mlflow
    assert res.returncode == 0, res.stderr


def test_help_and_validate_do_not_import_mlflow(tmp_path: Path) -> None:
    recipe = tmp_path / "tracked.yaml"
    recipe.write_text(f"base: {QUICK}\ntrain:\n  track: [mlflow]\n")
    code = (
        "import sys\nfrom mnistkit.cli.app import main\nsys.argv = ['mnistkit', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "seen = sorted({'mlflow', 'torch'} & set(sys.modules))\n"
        "print('exit', code or 0, 'imported', seen, file=sys.stderr)"
    )
    for args in (["--help"], ["validate", str(recipe)], ["track", "--help"]):
        res = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, cwd=REPO
        )
        assert res.stderr.splitlines()[-1] == "exit 0 imported []", (args, res.stderr)


# --------------------------------------------------------------------------- sweeps
SWEEP = """
recipe: {recipe}
set: {{data.val_split: 0.2, epochs: 2, train.plots: false}}
metric: val_acc
trials: {trials}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
params:
  optimizer.lr: {{float: [1.0e-3, 1.0e-2], log: true}}
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A sweep of 2 trials, then continued to 3 (trials raised in the sweep file)."""
    base = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    spec = base / "sweep.yaml"
    for trials in (2, 3):
        spec.write_text(SWEEP.format(recipe=QUICK, trials=trials))
        args = ["sweep", spec, "--track", "mlflow", "--out", base / "s", "--progress", "plain"]
        res = tracked(args, {"MLFLOW_TRACKING_URI": uri}, base)
        assert res.exit_code == 0, res.output
    return {"client": MlflowClient(uri), "dir": base / "s"}


def test_a_sweep_is_one_parent_run_with_a_nested_run_per_trial(swept: dict[str, Any]) -> None:
    client = swept["client"]
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    parents = [r for r in runs if "mnistkit.study" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # continued: the same parent
    parent = parents[0].info.run_id
    trials = sorted(
        (r for r in runs if r is not parents[0]), key=lambda r: int(r.data.tags["mnistkit.trial"])
    )
    assert [r.data.tags["mnistkit.trial"] for r in trials] == ["0", "1", "2"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in trials)
    assert all(r.data.tags["mnistkit.state"] == "COMPLETE" for r in trials)
    rows = {int(r["number"]): r for r in _csv(swept["dir"] / "trials.csv")}
    for r in trials:  # each nested run is its trial: the trial's own values
        assert float(r.data.params["optimizer.lr"]) == float(
            rows[int(r.data.tags["mnistkit.trial"])]["optimizer.lr"]
        )
    best = json.loads((swept["dir"] / "summary.json").read_text())["best"]["number"]
    assert [r.data.tags["mnistkit.trial"] for r in trials if r.data.tags.get("mnistkit.best")] == [str(best)]
    assert parents[0].data.tags["mnistkit.best_trial"] == str(best)


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- --nproc 2
@pytest.mark.distributed
def test_nproc_2_is_one_mlflow_run_logged_by_rank_0(tmp_path: Path, cli, server: dict[str, Any]) -> None:
    uri = server["wait"]()  # a server: every rank could reach it (an SQLite file may lock one out)
    run = tmp_path / "run"
    res = cli(
        "run", QUICK, *TRACK, "--nproc", "2", "--out", run, env={"MLFLOW_TRACKING_URI": uri}, cwd=tmp_path
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    client = MlflowClient(uri)
    rec = one_run(client, run)  # not one per process
    assert rec.data.tags["mnistkit.world_size"] == "2"
    rows = RunDir(run).read_metrics()
    assert series(client, rec.info.run_id, "test_acc") == [(r["epoch"], r["test_acc"]) for r in rows]


# --------------------------------------------------------------------------- the ONNX model
ONNX_ASKED = "train.mlflow.artifacts=[recipe,metrics,env,plots,onnx]"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run that asks for the ONNX model, tracked live (no export yet), then exported and sent
    with `mnistkit track`; a copy of it that does not ask, sent to a store of its own."""
    base = tmp_path_factory.mktemp("onnx")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    run = base / "run"
    env = {"MLFLOW_TRACKING_URI": uri}
    res = tracked(["run", QUICK, *TRACK, "--set", ONNX_ASKED, "--out", run], env, base)
    assert res.exit_code == 0, res.output
    client = MlflowClient(uri)
    before = artifacts(client, one_run(client, run).info.run_id)
    res = invoke("export", run)
    assert res.exit_code == 0, res.output
    res = tracked(["track", run], env, base)
    assert res.exit_code == 0, res.output
    plain = base / "plain"  # the same run and export, the recipe's default artifacts
    shutil.copytree(run, plain, ignore=shutil.ignore_patterns("mlflow.json"))
    text = (plain / "recipe.yaml").read_text()
    assert ", onnx]" in text  # (flow style, as mnistkit writes recipe.yaml)
    (plain / "recipe.yaml").write_text(text.replace(", onnx]", "]"))
    other = f"sqlite:///{base / 'other.db'}"
    res = tracked(["track", plain], {"MLFLOW_TRACKING_URI": other}, base)
    assert res.exit_code == 0, res.output
    return {"client": client, "run": run, "before": before, "plain": plain, "other": other}


def test_the_onnx_export_is_logged_with_its_signature_when_asked(exported: dict[str, Any]) -> None:
    import onnxruntime
    from mlflow.models import Model

    client, run = exported["client"], exported["run"]
    assert not any(a.startswith("onnx/") for a in exported["before"])  # nothing to log before export
    rec = one_run(client, run)
    have = artifacts(client, rec.info.run_id)
    assert {"onnx/MLmodel", "onnx/model.onnx"} <= have
    got = Path(client.download_artifacts(rec.info.run_id, "onnx", str(run.parent / "down")))
    assert (got / "model.onnx").read_bytes() == (run / "export" / "model.onnx").read_bytes()
    model = Model.load(str(got / "MLmodel"))
    assert "onnx" in model.flavors
    # The signature against the graph as onnxruntime reads it (not mnistkit's or MLflow's code).
    session = onnxruntime.InferenceSession(str(run / "export" / "model.onnx"))
    dtypes = {"float": "float32", "double": "float64"}  # onnxruntime's names; others: numpy's

    def want(values: Any) -> list[tuple[str, str, tuple[int, ...]]]:
        return [
            (
                v.name,
                dtypes.get(v.type[7:-1], v.type[7:-1]),  # tensor(float) -> float32
                tuple(d if isinstance(d, int) else -1 for d in v.shape),
            )
            for v in values
        ]

    def sig(schema: Any) -> list[tuple[str, str, tuple[int, ...]]]:
        return [(s.name, str(s.type), tuple(s.shape)) for s in schema.inputs]

    assert sig(model.signature.inputs) == want(session.get_inputs())
    assert sig(model.signature.outputs) == want(session.get_outputs())
    assert want(session.get_inputs())[0][2][0] == -1  # any batch size


def test_the_onnx_export_is_not_logged_by_default(exported: dict[str, Any]) -> None:
    client = MlflowClient(exported["other"])
    have = artifacts(client, one_run(client, exported["plain"]).info.run_id)
    assert "recipe.yaml" in have and not any(a.startswith("onnx") for a in have)


# --------------------------------------------------------------------------- pruned and retried
@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two sweeps, each in a store of its own: a grid over a learning rate that trains and one
    that cannot (pruned after its warm-up epoch, as in test_sweeps.py); and one trial stopped
    by Ctrl-C, then continued (the interrupted trial is failed and retried)."""
    from sweep_helpers import write_sweep

    out: dict[str, Any] = {}
    for case in ("pruned", "retried"):
        base = tmp_path_factory.mktemp(case)
        uri = f"sqlite:///{base / 'mlflow.db'}"
        text = write_sweep(base, 2 if case == "pruned" else 1).read_text()
        if case == "pruned":
            text = text.replace("pruner: none", "pruner: {name: median, warmup_epochs: 1, startup_trials: 1}")
            text = text.replace("{name: tpe, seed: 0, startup_trials: 2}", "{name: grid, seed: 1}")
            text = text.replace("{float: [1.0e-3, 3.0e-2], log: true}", "{choice: [0.01, 1.0e-7]}")
            text = text.replace("  model.hidden: {choice: [[64], [32, 16]]}\n", "")
            text = text.replace("epochs: 2", "epochs: 3")
        spec = base / "sweep.yaml"
        spec.write_text(text)
        args = ["sweep", spec, "--track", "mlflow", "--out", base / "s", "--progress", "plain"]
        if case == "retried":
            res = tracked(args, {"MLFLOW_TRACKING_URI": uri, "MNISTKIT_KILL_AT": "2:2:INT"}, base)
            assert res.exit_code == 130, res.output
        res = tracked(args, {"MLFLOW_TRACKING_URI": uri, "MNISTKIT_KILL_AT": ""}, base)
        assert res.exit_code == 0, res.output
        out[case] = (MlflowClient(uri), base / "s")
    return out


@pytest.mark.parametrize("case", ["pruned", "retried"])
def test_sweep_trials_are_tagged_pruned_after_and_retry_of(pruned: dict[str, Any], case: str) -> None:
    client, sweep_dir = pruned[case]
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    tags = {r.data.tags["mnistkit.trial"]: r.data.tags for r in runs if "mnistkit.trial" in r.data.tags}
    rows = _csv(sweep_dir / "trials.csv")
    happened = {"pruned": "PRUNED", "retried": "FAIL"}[case]
    assert happened in {r["state"] for r in rows}, rows  # the case under test happened
    checked = 0
    for row in rows:
        if row["state"] != "FAIL":  # a retry continues the failed trial's run directory and run
            have = tags[row["number"]]
            assert have["mnistkit.state"] == row["state"]
            want = row["epochs"] if row["state"] == "PRUNED" else None
            assert have.get("mnistkit.pruned_after") == want, (row, have)
            assert have.get("mnistkit.retry_of") == (row["retry_of"] or None), (row, have)
            checked += bool(want) if case == "pruned" else bool(row["retry_of"])
    assert checked == 1
