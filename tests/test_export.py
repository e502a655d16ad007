"""`mnistkit export`, `predict model.onnx` and `eval model.onnx` (issue 13), with real ONNX Runtime.

* Every shipped recipe's model (MLPs, the CNN with BatchNorm, the CNN-BiLSTM-attention audio
  model) exports, and ONNX Runtime's logits match torch's at batch sizes 1 and 7.
* Tiny trained runs (digits MLP, digits CNN with BatchNorm, a CNN-BiLSTM-attention on synthetic
  tones; real Fashion-MNIST where available): export through the CLI, metadata read back from the
  InferenceSession, predict model.onnx == predict RUN_DIR, eval model.onnx == the checkpoint's
  test accuracy, predict model.onnx with torch unimportable.
* Bad input: clear message, exit 1, nothing written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import invoke, train
from PIL import Image

from mnistkit.export import metadata
from mnistkit.runs.directory import RunDir

REPO = Path(__file__).resolve().parents[1]


def export(run: Path, *args: Any) -> dict[str, Any]:
    res = invoke("export", run, "--json", *args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def predict_json(*args: Any) -> dict[str, Any]:
    res = invoke("predict", *args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def assert_matches_torch(model_path: Path, run: Path, x: torch.Tensor) -> None:
    """ONNX Runtime on raw inputs vs the run's torch model on the same inputs normalized as in
    training, at batch sizes 1 and 7: logits within the tolerance, identical argmax."""
    from mnistkit.data.batches import to_float
    from mnistkit.evaluation.predict import input_scale, load_predictor

    pred = load_predictor(run, "best")
    info = pred.info
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        xb = x[:n]
        with torch.inference_mode():
            ref = pred.model(to_float(xb, tuple(info["mean"]), tuple(info["std"]), input_scale(info)))
        logits, probs = session.run(None, {"input": xb.numpy()})
        assert logits.shape == (n, len(info["classes"])) and probs.shape == logits.shape
        assert np.abs(logits - ref.numpy()).max() <= metadata.DEFAULT_TOLERANCE
        assert (logits.argmax(1) == ref.numpy().argmax(1)).all()
        np.testing.assert_allclose(probs, torch.softmax(ref, 1).numpy(), atol=1e-6)


def assert_same_predictions(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert len(a["predictions"]) == len(b["predictions"])
    for pa, pb in zip(a["predictions"], b["predictions"], strict=True):
        assert (pa["file"], pa["class"], pa["index"]) == (pb["file"], pb["class"], pb["index"])
        assert [t["index"] for t in pa["top"]] == [t["index"] for t in pb["top"]]
        for ta, tb in zip(pa["top"], pb["top"], strict=True):
            assert ta["probability"] == pytest.approx(tb["probability"], abs=1e-6)
        assert pa.get("note") == pb.get("note")


# ------------------------------------------------------------------ every shipped recipe
@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "recipes").glob("*.yaml")))
def test_every_shipped_recipes_model_exports_and_matches_torch(name: str) -> None:
    from mnistkit.build.components import build_model
    from mnistkit.data.batches import affine
    from mnistkit.export.onnx_export import ExportModule, _export, verify
    from mnistkit.recipe.schema import load_recipe
    from mnistkit.registry import registries

    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    feats = recipe.data.features
    in_shape = (1, 8, 8) if recipe.data.dataset == "digits" else (1, 28, 28)
    if feats is not None:
        in_shape = (1, feats.n_mels, feats.frames)
    torch.manual_seed(0)
    model, _ = build_model(recipe, in_shape, 10, registries())
    for m in model.modules():  # BatchNorm with non-trivial statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None, f"{name}: {m} has no statistics"
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    scale = 1.0 if feats is not None else 1 / 255
    mul, add = affine((0.25,), (0.5,), scale, len(in_shape) + 1)
    module = ExportModule(model.eval(), mul, add).eval()
    g = torch.Generator().manual_seed(1)
    if feats is not None:
        x = torch.randn((7, *in_shape), generator=g)
    else:
        x = torch.randint(0, 256, (7, *in_shape), generator=g, dtype=torch.uint8)
    proto = _export(module, x[:2], None)
    # verify() raises beyond the tolerance; it runs batch 7 and batch 1 (each sample alone).
    result = verify(module, proto.SerializeToString(), x, metadata.DEFAULT_TOLERANCE)
    assert result["agreement"] == 1.0 and result["batch_sizes"] == [1, 7]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == ("tensor(float)" if feats is not None else "tensor(uint8)")
    assert session.get_inputs()[0].shape[1:] == list(in_shape)
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # dynamic batch axis


# ------------------------------------------------------------------ digits MLP, end to end
DIGITS = """\
name: digits-export
data: {dataset: digits, batch_size: 64}
model: {hidden: [64]}
optimizer: {name: adam, lr: 0.005}
epochs: 2
train: {progress: none, threads: 1, plots: false}
"""


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("digits"), DIGITS)


@pytest.fixture(scope="module")
def digits_export(digits_run: Path) -> dict[str, Any]:
    return export(digits_run)


@pytest.fixture(scope="module")
def digits_test() -> Any:
    from mnistkit.data.vision import load_sklearn_digits

    return load_sklearn_digits().test


def test_export_writes_model_and_json_in_the_run(digits_run: Path, digits_export: dict[str, Any]) -> None:
    out = digits_run / "export" / "model.onnx"
    assert digits_export["saved"] == [str(out), str(digits_run / "export" / "model.json")]
    v = digits_export["verification"]
    assert v["samples"] == 256 and v["agreement"] == 1.0
    assert 0 <= v["max_abs_logit_diff"] <= metadata.DEFAULT_TOLERANCE
    res = invoke("export", digits_run)  # the table; replaces its own earlier export
    assert res.exit_code == 0, res.output
    for text in ("opset", "input uint8 [batch, 1, 8, 8] (image)", "[batch, 10]", "256 test samples"):
        assert text in res.output
    assert "max |logit diff|" in res.output and "classes agree 100.00%" in res.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.json", "model.onnx"]  # no temp files


def test_metadata_reads_back_from_the_session(digits_run: Path, digits_export: dict[str, Any]) -> None:
    path = digits_run / "export" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)]
    assert meta["input_name"] == "input" and meta["input_dtype"] == "uint8" and meta["input_kind"] == "image"
    assert json.loads(meta["input_shape"]) == ["batch", 1, 8, 8]
    norm = json.loads(meta["normalization"])
    info = json.loads((digits_run / "data.json").read_text())
    assert (
        norm["mean"] == info["mean"]
        and norm["std"] == info["std"]
        and norm["scale"] == pytest.approx(1 / 255)
    )
    assert norm["inside_graph"] is True and json.loads(meta["features"]) is None
    assert meta["recipe_name"] == "digits-export" and meta["dataset"] == "digits"
    assert meta["checkpoint"] == "best"
    rows = RunDir(digits_run).read_metrics()
    best = max(rows, key=lambda r: r["test_acc"])
    assert int(meta["checkpoint_epoch"]) == best["epoch"]
    assert json.loads(meta["checkpoint_test_accuracy"]) == best["test_acc"]
    assert meta["torch_version"] == torch.__version__ and meta["mnistkit_version"]
    assert int(meta["onnx_opset"]) >= 17
    assert json.loads(meta["recipe"])["model"]["hidden"] == [64]
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    # model.json beside it: the same entries, decoded
    side = json.loads((digits_run / "export" / "model.json").read_text())
    assert list(side) == list(metadata.ENTRIES)
    assert side == metadata.decode(meta, str(path))


def test_digits_mlp_matches_torch_at_batch_1_and_7(
    digits_run: Path, digits_export: dict[str, Any], digits_test: Any
) -> None:
    assert_matches_torch(digits_run / "export" / "model.onnx", digits_run, digits_test.x[:7])


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory: pytest.TempPathFactory, digits_test: Any) -> list[Path]:
    out = tmp_path_factory.mktemp("pngs")
    files = []
    for i in range(5):
        path = out / f"digit-{i}.png"
        Image.fromarray(digits_test.x[i, 0].numpy()).save(path)
        files.append(path)
    # one that needs resizing, one with alpha, one light-on-dark the wrong way round (a note)
    Image.fromarray(digits_test.x[5, 0].numpy()).resize((40, 40)).save(out / "big.png")
    Image.new("LA", (8, 8), (255, 0)).save(out / "alpha.png")
    Image.new("L", (8, 8), 230).save(out / "light.png")
    return [*files, out / "big.png", out / "alpha.png", out / "light.png"]


def test_predict_onnx_equals_predict_run_dir(
    digits_run: Path, digits_export: dict[str, Any], digit_pngs: list[Path]
) -> None:
    model = digits_run / "export" / "model.onnx"
    for extra in ([], ["--top", "3"], ["--invert"]):
        a = predict_json(digits_run, *digit_pngs, *extra)
        b = predict_json(model, *digit_pngs, *extra)
        assert_same_predictions(a, b)
        assert b["model"] == str(model) and b["checkpoint"] == "best" and b["dataset"] == "digits"
        assert any("note" in p for p in b["predictions"])  # light.png: the background hint, in both
    res = invoke("predict", model, *digit_pngs[:2])
    assert res.exit_code == 0, res.output
    assert "model.onnx (exported from best.pt" in " ".join(res.output.split())  # (title wraps)


def test_eval_onnx_gives_the_checkpoints_accuracy(
    digits_run: Path, digits_export: dict[str, Any], digits_test: Any
) -> None:
    from mnistkit.evaluation.evaluate import evaluate_run
    from mnistkit.export.evaluate import evaluate_onnx

    result = evaluate_onnx(digits_run / "export" / "model.onnx")
    best = max(RunDir(digits_run).read_metrics(), key=lambda r: r["test_acc"])
    assert result["samples"] == len(digits_test.y)
    assert result["accuracy"] == best["test_acc"] == evaluate_run(digits_run, "best")["accuracy"]
    res = invoke("eval", digits_run / "export" / "model.onnx")
    assert res.exit_code == 0, res.output
    assert f"{best['test_acc']:.2%}" in res.output and "the same" in res.output


BLOCK_TORCH = """\
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"import of {name} blocked by the test")
sys.meta_path.insert(0, _NoTorch())
"""


def test_predict_onnx_runs_with_torch_unimportable(
    cli: Any, digits_run: Path, digits_export: dict[str, Any], digit_pngs: list[Path]
) -> None:
    model = digits_run / "export" / "model.onnx"
    res = cli("predict", model, *digit_pngs, "--json", prelude=BLOCK_TORCH)
    assert res.returncode == 0, res.stderr
    assert_same_predictions(json.loads(res.stdout), predict_json(digits_run, *digit_pngs))
    # The blocker really blocks: the run-directory path needs torch and fails under it.
    res = cli("predict", digits_run, *digit_pngs[:1], prelude=BLOCK_TORCH)
    assert res.returncode == 1 and "blocked by the test" in res.stderr


# ------------------------------------------------------------------ bad input
def test_export_errors_exit_1_and_write_nothing(
    digits_run: Path, digits_export: dict[str, Any], tmp_path: Path
) -> None:
    # a run directory without checkpoints
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "recipe.yaml").write_text((digits_run / "recipe.yaml").read_text())
    res = invoke("export", bare)
    assert res.exit_code == 1 and "best.pt does not exist" in res.output
    assert not (bare / "export").exists()  # not even the folder
    # not a run
    res = invoke("export", tmp_path)
    assert res.exit_code == 1 and "not a run directory (no recipe.yaml)" in res.output
    res = invoke("export", tmp_path / "missing")
    assert res.exit_code == 1 and "no such run directory" in res.output
    # --out that cannot be written: under a regular file
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = invoke("export", digits_run, "--out", blocker / "m.onnx")
    assert res.exit_code == 1 and "cannot create the folder" in res.output
    # --out not .onnx, --out someone else's file
    res = invoke("export", digits_run, "--out", tmp_path / "m.txt")
    assert res.exit_code == 1 and "ending in .onnx" in res.output
    theirs = tmp_path / "theirs.onnx"
    theirs.write_bytes(b"precious")
    res = invoke("export", digits_run, "--out", theirs)
    assert res.exit_code == 1 and "not written by mnistkit export" in res.output
    assert theirs.read_bytes() == b"precious"
    # an opset the exporter cannot produce
    res = invoke("export", digits_run, "--out", tmp_path / "old.onnx", "--opset", "9")
    assert res.exit_code == 1 and "--opset 9" in res.output and "produced opset" in res.output
    # a custom --out works, and writes FILE.json beside FILE.onnx
    good = export(digits_run, "--out", tmp_path / "deploy" / "digits.onnx", "--opset", "18")
    assert good["onnx_opset"] == 18
    assert (tmp_path / "deploy" / "digits.json").is_file()


def shift_logits(proto: Any, by: float) -> Any:
    """``proto`` with ``by`` added to its logits output: an exported graph that really differs
    from the torch model it came from (probabilities, computed from the logits, shift too)."""
    import onnx
    from onnx import helper, numpy_helper

    name = metadata.OUTPUT_NAMES[0]
    for node in proto.graph.node:
        node.output[:] = [f"{name}_unshifted" if o == name else o for o in node.output]
        node.input[:] = [f"{name}_unshifted" if i == name else i for i in node.input]
    proto.graph.initializer.append(numpy_helper.from_array(np.array(by, dtype=np.float32), "shift"))
    proto.graph.node.append(helper.make_node("Add", [f"{name}_unshifted", "shift"], [name]))
    onnx.checker.check_model(proto)
    return proto


def test_a_graph_that_differs_from_torch_is_refused_and_nothing_written(
    digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parity gate on a real mismatch (an exported graph whose logits are 0.01 off), not on
    float noise: refused at the default tolerance, accepted once --tolerance admits 0.01."""
    from mnistkit.export import onnx_export

    real = onnx_export._export
    monkeypatch.setattr(onnx_export, "_export", lambda *a: shift_logits(real(*a), 0.01))
    out = tmp_path / "strict" / "m.onnx"
    res = invoke("export", digits_run, "--out", out)
    assert res.exit_code == 1, res.output
    assert "verification failed" in res.output and "differ from torch's by up to 0.01 " in res.output
    assert "(tolerance 0.0001; 100 times over)" in res.output
    assert "nothing was written" in res.output
    assert not out.parent.exists()  # the folder it created is gone again
    assert not list(tmp_path.rglob("*.tmp-*")) and not list(tmp_path.rglob("*.probe-*"))
    # --tolerance is what the gate compares with: 0.02 admits the same graph
    loose = export(digits_run, "--out", out, "--tolerance", "0.02")
    assert loose["verification"]["max_abs_logit_diff"] == pytest.approx(0.01, abs=1e-4)
    assert out.is_file()
    assert json.loads(out.with_suffix(".json").read_text())["verification"]["tolerance"] == 0.02


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_export_to_a_read_only_folder(
    digits_run: Path, digits_export: dict[str, Any], tmp_path: Path
) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        res = invoke("export", digits_run, "--out", ro / "m.onnx")
        assert res.exit_code == 1 and "cannot write in" in res.output
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_atomic_write_bytes_leaves_nothing_on_failure(tmp_path: Path) -> None:
    from mnistkit.fsutil import atomic_write_bytes

    target = tmp_path / "model.onnx"
    target.mkdir()  # os.replace of a file over a non-empty folder fails
    (target / "keep").write_text("kept")
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert (target / "keep").read_text() == "kept"


def test_predict_onnx_errors(tmp_path: Path, digit_pngs: list[Path]) -> None:
    import onnx
    from onnx import TensorProto, helper

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    res = invoke("predict", garbage, digit_pngs[0])
    assert res.exit_code == 1 and "cannot load it as an ONNX model" in res.output
    res = invoke("predict", tmp_path / "missing.onnx", digit_pngs[0])
    assert res.exit_code == 1 and "missing.onnx: no such file" in res.output
    # a valid ONNX model that mnistkit did not export
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), foreign)
    res = invoke("predict", foreign, digit_pngs[0])
    assert res.exit_code == 1 and "not exported by mnistkit" in res.output
    res = invoke("eval", foreign)
    assert res.exit_code == 1 and "not exported by mnistkit" in res.output


def test_predict_onnx_bad_files(digits_run: Path, digits_export: dict[str, Any], tmp_path: Path) -> None:
    model = digits_run / "export" / "model.onnx"
    bad = tmp_path / "bad.png"
    bad.write_text("no image")
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    res = invoke("predict", model, bad, wav, tmp_path / "nope.png")
    assert res.exit_code == 1 and "cannot read 3 files" in res.output
    assert "trained on images" in res.output and "no such file" in res.output


# ------------------------------------------------------------------ CNN with BatchNorm
CNN = """\
name: digits-cnn
data: {dataset: digits, batch_size: 64}
model:
  layers:
    - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
    - {type: batchnorm2d}
    - {type: relu}
    - {type: maxpool2d, kernel_size: 2}
    - {type: flatten}
    - {type: linear, out_features: 10}
optimizer: {name: adam, lr: 0.005}
epochs: 1
train: {progress: none, threads: 1, plots: false}
"""


def test_cnn_with_batchnorm_exports_and_matches_torch(tmp_path: Path, digits_test: Any) -> None:
    run = train(tmp_path, CNN)
    result = export(run)
    assert result["verification"]["agreement"] == 1.0
    assert_matches_torch(run / "export" / "model.onnx", run, digits_test.x[:7])


# ------------------------------------------------------------------ CNN-BiLSTM-attention audio
AUDIO = """\
name: tones-lstm
data:
  dataset: audio_folder
  root: {root}
  batch_size: 4
  test_fraction: 0.34
  features: {{n_fft: 256, hop_length: 64, n_mels: 16, frames: 16}}
model:
  layers:
    - {{type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}}
    - {{type: batchnorm2d}}
    - {{type: relu}}
    - {{type: maxpool2d, kernel_size: 2}}
    - {{type: to_sequence}}
    - {{type: lstm, hidden_size: 8, bidirectional: true, return: sequence}}
    - {{type: attention_pool, hidden_size: 8}}
    - {{type: linear, out_features: 2}}
optimizer: {{name: adam, lr: 0.01}}
epochs: 3
train: {{plots: false, progress: none, threads: 1}}
"""


def _tone(path: Path, freq: float, sr: int = 8000, seconds: float = 0.25) -> None:
    import soundfile as sf

    t = np.arange(int(sr * seconds)) / sr
    sf.write(path, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)


def test_audio_cnn_bilstm_attention_exports_predicts_and_evaluates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNISTKIT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "audio"
    for name, freq in (("high", 2000.0), ("low", 300.0)):
        (root / name).mkdir(parents=True)
        for k in range(6):
            _tone(root / name / f"{k}.wav", freq * (1 + 0.02 * k))
    run = train(tmp_path, AUDIO.format(root=root))
    result = export(run)
    assert result["input_dtype"] == "float32" and result["input_kind"] == "audio"
    assert result["input_shape"] == ["batch", 1, 16, 16]
    assert result["features"]["n_mels"] == 16 and result["features"]["frames"] == 16
    model = run / "export" / "model.onnx"

    from mnistkit.data.loading import load_dataset
    from mnistkit.registry import registries

    loaded = load_dataset(RunDir(run).load_recipe(), registries(), None)
    x = torch.cat([loaded.test.x, loaded.train.x])[:7]
    assert_matches_torch(model, run, x)

    wavs = [root / "high" / "0.wav", root / "low" / "5.wav"]
    assert_same_predictions(predict_json(run, *wavs, "--top", "2"), predict_json(model, *wavs, "--top", "2"))

    from mnistkit.export.evaluate import evaluate_onnx

    best = max(RunDir(run).read_metrics(), key=lambda r: r["test_acc"])
    assert evaluate_onnx(model)["accuracy"] == best["test_acc"]


# ------------------------------------------------------------------ Fashion-MNIST subset
FASHION = """\
name: fashion-export
data: {dataset: fashion_mnist, limit: 5000, test_limit: 2000, batch_size: 64}
model: {hidden: [128, 64]}
optimizer: {name: adam, lr: 0.002}
epochs: 2
train: {progress: none, threads: 1, plots: false}
"""


def test_exported_mlp_accuracy_on_fashion_equals_the_checkpoints(shared_data: Path, tmp_path: Path) -> None:
    """`eval model.onnx` reproduces the checkpoint's test accuracy, sample by sample.

    ONNX Runtime and torch are different implementations: their logits agree within the export's
    verified tolerance, not bit for bit. So a test sample whose two best torch logits are closer
    than that may legitimately go either way; every other sample must get the same class, and the
    accuracies may differ by at most the number of such near-ties (none, in practice). Equality
    of accuracy alone would rest on float noise.

    Cost on a loaded machine is kept down (the test once ran past its limit there): one training
    run, the test split loaded once for the torch side, the CLI's eval for one checkpoint."""
    from mnistkit.data.batches import raw_test_split, to_float
    from mnistkit.data.loading import load_dataset
    from mnistkit.evaluation.predict import input_scale, load_predictor
    from mnistkit.export.evaluate import evaluate_onnx
    from mnistkit.export.runtime import load_model
    from mnistkit.registry import registries

    fashion = shared_data / "fashion-mnist"
    if not fashion.is_dir():
        pytest.skip(f"no Fashion-MNIST at {fashion}")
    run = train(tmp_path, FASHION, data_dir=fashion)
    recipe = RunDir(run).load_recipe()
    test = raw_test_split(load_dataset(recipe, registries(), fashion), recipe.data)
    y = test.y.numpy()
    for checkpoint in ("best", "last"):
        out = tmp_path / f"{checkpoint}.onnx"
        meta = export(run, "--checkpoint", checkpoint, "--out", out)
        tol = meta["verification"]["tolerance"]
        pred = load_predictor(run, checkpoint)
        info = pred.info
        with torch.inference_mode():
            logits = pred.model(to_float(test.x, tuple(info["mean"]), tuple(info["std"]), input_scale(info)))
        top2 = torch.topk(logits, 2, dim=1).values
        near_tie = ((top2[:, 0] - top2[:, 1]) <= 2 * tol).numpy()
        torch_pred = logits.argmax(1).numpy()
        onnx_pred = np.concatenate([load_model(out).probabilities(test.x[i : i + 500].numpy()).argmax(1)
                                    for i in range(0, len(y), 500)])  # fmt: skip
        assert (onnx_pred == torch_pred)[~near_tie].all()
        ties = int(near_tie.sum())
        onnx_result = evaluate_onnx(out, fashion)
        assert onnx_result["samples"] == len(y) == 2000
        assert abs(round(onnx_result["accuracy"] * 2000) - int((torch_pred == y).sum())) <= ties
        assert abs(round(meta["checkpoint_test_accuracy"] * 2000) - int((torch_pred == y).sum())) <= ties
        if checkpoint == "best" and ties == 0:
            res = invoke("eval", out, "--data-dir", fashion)
            assert res.exit_code == 0, res.output
            assert f"{onnx_result['accuracy']:.2%}" in res.output and "the same" in res.output
