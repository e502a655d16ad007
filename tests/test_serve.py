"""``mnistkit serve`` (issue 23): real server processes on free loopback ports, a real HTTP client.

Every server here runs with ``import torch`` made to fail (the serving path must not need it);
the run directory it serves from has no export at first, so the first server also proves that
``serve RUN_DIR`` exports first (in a child process, which may import torch). The reference for
every answer is ``mnistkit predict model.onnx`` on the same files. Nothing here depends on timing:
batching and overload are made certain by a long ``--max-wait-ms`` (a batch is held until it
is full) and waits are "until the server reports X", never "X within N ms".
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import invoke, train
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RECIPE = """\
name: serve-test
data: {dataset: digits, batch_size: 64}
model: {hidden: [64]}
optimizer: {name: adam, lr: 0.005}
epochs: 2
train: {progress: none, threads: 1, plots: false}
"""
# The server process: torch (and torchvision) unimportable, then the CLI as a user runs it.
NO_TORCH_SERVE = (
    "import sys\n"
    "sys.modules['torch'] = None\n"
    "sys.modules['torchvision'] = None\n"
    "sys.argv = ['mnistkit', *sys.argv[1:]]\n"
    "from mnistkit.cli.app import main\n"
    "main()\n"
)
START_TIMEOUT_S = 240  # the first server exports the run (torch, in a child) before it serves


# ----------------------------------------------------------------------------------- helpers
class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def predict(self, files: list[Path], top: int = 3) -> tuple[int, dict[str, str], Any]:
        body, ctype = multipart([(f.name, f.read_bytes()) for f in files])
        status, headers, data = self.request("POST", f"/predict?top={top}", body, {"Content-Type": ctype})
        return status, headers, json.loads(data)

    def metric(self, name: str, **labels: str) -> float:
        """The value of the sample ``name`` on /metrics whose labels include ``labels``."""
        status, _, text = self.request("GET", "/metrics")
        assert status == 200
        for line in text.decode().splitlines():
            found = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
            if found and found.group(1) == name:
                have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2) or ""))
                if labels.items() <= have.items():
                    return float(found.group(3))
        raise AssertionError(f"{name} {labels} not in /metrics:\n{text.decode()}")

    def wait_until(self, what: str, check: Any) -> None:
        """Poll until ``check()`` holds (the server reports a state); fail if the server dies."""
        deadline = time.monotonic() + 120  # a hang guard only, never what the test measures
        while not check():
            assert self.proc.poll() is None, (
                f"server exited while waiting for {what}:\n{self.log.read_text()}"
            )
            assert time.monotonic() < deadline, f"gave up waiting for {what}"
            time.sleep(0.05)


class HeldRequest:
    """A ``POST /predict`` sent in two parts: its headers and the first bytes of its body now, the
    rest on :meth:`finish`. In between the server has started on it (``mnistkit_requests_arriving``)
    and a batch in the making waits for it: how a slow upload looks to the server."""

    def __init__(self, server: Server, files: list[Path]) -> None:
        body, ctype = multipart([(f.name, f.read_bytes()) for f in files])
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        self.conn.putrequest("POST", "/predict?top=3")
        self.conn.putheader("Content-Type", ctype)
        self.conn.putheader("Content-Length", str(len(body)))
        self.conn.endheaders(body[:16])
        self.rest = body[16:]

    def send_rest(self) -> None:
        self.conn.send(self.rest)

    def answer(self) -> tuple[int, Any]:
        resp = self.conn.getresponse()
        try:
            return resp.status, json.loads(resp.read())
        finally:
            self.conn.close()


def multipart(parts: list[tuple[str, bytes]], field: str = "files") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = b""
    for name, data in parts:
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(target: Path, log: Path, *options: str) -> Server:
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", NO_TORCH_SERVE, "serve", str(target), "--port", str(port), *options],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, port, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert proc.poll() is None, f"server exited {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"server not up:\n{log.read_text()}"
        try:
            if server.request("GET", "/health")[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.1)


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


def reference(model: Path, files: list[Path], top: int = 3) -> list[dict[str, Any]]:
    """``mnistkit predict model.onnx FILES --json --top K``: what the server must answer."""
    res = invoke("predict", model, *files, "--json", "--top", str(top))
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["predictions"]


def assert_same(served: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(served) == len(expected)
    for s, e in zip(served, expected, strict=True):
        assert s["file"] == Path(e["file"]).name
        assert [t["class"] for t in s["top"]] == [t["class"] for t in e["top"]], s["file"]
        got, want = [t["probability"] for t in s["top"]], [t["probability"] for t in e["top"]]
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert s.get("note") == e.get("note"), s["file"]
        assert s["notes"] == (e["note"].split("; ") if "note" in e else [])


def bomb_png(side: int = 10_000) -> bytes:
    """A PNG whose header claims ``side`` x ``side`` pixels (100 megapixels: over Pillow's warning
    threshold, under its own hard stop, so it is mnistkit's stricter limit that refuses it): a bomb
    that a reader must refuse from its header, before allocating or inflating anything."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("serve"), RECIPE)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Ten distinct test digits as PNGs, then one enlarged 5x and one light one (both get notes)."""
    from mnistkit.data.vision import load_sklearn_digits

    x = load_sklearn_digits().test.x
    out = tmp_path_factory.mktemp("images")
    files = []
    for i in range(10):
        files.append(out / f"digit-{i}.png")
        Image.fromarray(x[i, 0].numpy()).save(files[-1])
    files.append(out / "big.png")
    Image.fromarray(x[10, 0].numpy()).resize((40, 40)).save(files[-1])
    files.append(out / "light.png")
    Image.new("L", (8, 8), 230).save(files[-1])
    return files


@pytest.fixture(scope="module")
def server(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Served from the run directory (no export yet: serve exports it first), small limits."""
    assert not (run / "export" / "model.onnx").exists()
    log = tmp_path_factory.mktemp("logs") / "server.log"
    s = start_server(run, log, "--max-files", "4", "--max-body-mb", "0.05", "--max-queue", "16")
    yield s
    stop(s)


@pytest.fixture(scope="module")
def model(run: Path, server: Server) -> Path:
    return run / "export" / "model.onnx"  # written by the server's start-up export


@pytest.fixture(scope="module")
def batching_server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """While another request is arriving, a batch waits for it (20 s at most) until 8 inputs are
    in: with held requests (HeldRequest), batching is certain, not likely."""
    log = tmp_path_factory.mktemp("logs") / "batching.log"
    s = start_server(
        model, log, "--max-batch", "8", "--max-wait-ms", "20000", "--max-queue", "8", "--max-files", "8"
    )
    yield s
    stop(s)


# ----------------------------------------------------------------------------------- tests
def test_answers_equal_predict_for_multipart_and_raw_bodies(
    server: Server, model: Path, images: list[Path]
) -> None:
    log = server.log.read_text()
    assert "exporting the run first" in log and "verified:" in log  # the export ran, with its check
    expected = reference(model, images[:4])
    status, _, data = server.predict(images[:4])
    assert status == 200, data
    assert_same(data["predictions"], expected)
    # the two files that carry predict's notes (resized 5x; light background)
    status, _, data = server.predict(images[10:])
    assert status == 200, data
    assert_same(data["predictions"], reference(model, images[10:]))
    assert all(p["notes"] for p in data["predictions"])
    # a raw body with an image content type
    status, _, raw = server.request(
        "POST", "/predict?top=3", images[5].read_bytes(), {"Content-Type": "image/png"}
    )
    served = json.loads(raw)["predictions"]
    assert status == 200 and len(served) == 1
    expected = reference(model, [images[5]])[0]
    assert [t["class"] for t in served[0]["top"]] == [t["class"] for t in expected["top"]]
    np.testing.assert_allclose(
        [t["probability"] for t in served[0]["top"]], [t["probability"] for t in expected["top"]], atol=1e-5
    )


def test_metadata_health_openapi_and_metrics(server: Server, model: Path) -> None:
    status, _, body = server.request("GET", "/metadata")
    meta = json.loads(body)
    model_json = json.loads((model.parent / "model.json").read_text())
    assert status == 200
    assert meta["classes"] == model_json["classes"]
    assert meta["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert meta["source"]["run_dir"] == model_json["run_dir"]
    assert meta["input"]["shape"][1:] == [1, 8, 8] and meta["input"]["dtype"] == "uint8"
    status, _, body = server.request("GET", "/health")
    assert status == 200 and json.loads(body)["ready"] is True
    status, _, body = server.request("GET", "/openapi.json")
    spec = json.loads(body)
    assert status == 200 and spec["openapi"].startswith("3.")
    assert set(spec["paths"]) >= {"/predict", "/health", "/metadata", "/metrics"}
    status, headers, body = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert re.search(
        r'^mnistkit_requests_total\{[^}]*path="/metadata",status="200"\} 1$', body.decode(), re.M
    )
    assert "mnistkit_request_duration_seconds_bucket" in body.decode()


@pytest.mark.parametrize(
    "case,status,problem,says",
    [
        ("too-large", 413, "body_too_large", "larger than the server's limit"),
        ("too-large-chunked", 413, "body_too_large", "larger than the server's limit"),
        ("declared-too-large", 413, "body_too_large", "larger than the server's limit"),
        ("too-many-files", 400, "too_many_files", "at most 4"),
        ("bomb", 422, "unreadable_input", "decompression bomb"),
        ("truncated", 422, "unreadable_input", "truncated"),
        ("not-an-image", 422, "unreadable_input", "notes.png: cannot read it as an image"),
        ("wrong-type", 415, "unsupported_content_type", "'text/plain' is not accepted"),
        ("empty-body", 400, "empty_request", "no body"),
        ("empty-file", 400, "empty_file", "empty.png: the file is empty"),
        ("wrong-field", 400, "no_files", "got field(s) 'file'"),
        ("bad-top", 400, "bad_parameter", "top='0'"),
    ],
)
def test_bad_input_is_a_4xx_json_naming_it_and_the_server_goes_on(
    server: Server, images: list[Path], case: str, status: int, problem: str, says: str
) -> None:
    png = images[0].read_bytes()
    one = images[0].name
    bodies: dict[str, tuple[str, Any, str]] = {
        "too-large": ("/predict", os.urandom(60_000), "image/png"),
        # no Content-Length (chunked): the limit is counted as the body arrives
        "too-large-chunked": ("/predict", (os.urandom(10_000) for _ in range(6)), "image/png"),
        "too-many-files": ("/predict", *multipart([(f"{i}.png", png) for i in range(5)])),
        "bomb": ("/predict", *multipart([("bomb.png", bomb_png())])),
        "truncated": ("/predict", *multipart([("cut.png", png[: len(png) * 2 // 3])])),
        "not-an-image": ("/predict", *multipart([("notes.png", b"just some text, not a picture\n" * 4)])),
        "wrong-type": ("/predict", b"hello", "text/plain"),
        "empty-body": ("/predict", b"", "image/png"),
        "empty-file": ("/predict", *multipart([(one, png), ("empty.png", b"")])),
        "wrong-field": ("/predict", *multipart([(one, png)], field="file")),
        "bad-top": ("/predict?top=0", *multipart([(one, png)])),
    }
    # Content-Length says 1 GB, 100 bytes come: refused from the header, without waiting for the rest
    bodies["declared-too-large"] = ("/predict", png[:100], "image/png")
    path, body, ctype = bodies[case]
    headers = {"Content-Type": ctype}
    if case == "declared-too-large":
        headers["Content-Length"] = str(10**9)
    got, _, raw = server.request("POST", path, body, headers)
    text = raw.decode()
    assert "Traceback" not in text
    answer = json.loads(text)
    assert (got, answer["problem"]) == (status, problem), answer
    assert says in answer["error"], answer["error"]
    # still serving
    ok, _, data = server.predict(images[:1])
    assert ok == 200 and len(data["predictions"]) == 1


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_answer(
    batching_server: Server, model: Path, images: list[Path]
) -> None:
    files = images[:8]  # eight distinct digits, one request each, all under way at once
    expected = reference(model, files)
    held = [HeldRequest(batching_server, [f]) for f in files]
    batching_server.wait_until(
        "8 requests arriving", lambda: batching_server.metric("mnistkit_requests_arriving") == 8
    )
    batches_before = batching_server.metric("mnistkit_batch_size_count")
    # The first one complete: its input must wait for the seven still arriving, not run alone.
    held[0].send_rest()
    batching_server.wait_until(
        "the first input queued (or run)",
        lambda: (
            batching_server.metric("mnistkit_queue_inputs") == 1
            or batching_server.metric("mnistkit_batch_size_count") > batches_before
        ),
    )
    for h in held[1:]:
        h.send_rest()
    for h, want in zip(held, expected, strict=True):
        status, data = h.answer()
        assert status == 200, data
        assert_same(data["predictions"], [want])
    batches = batching_server.metric("mnistkit_batch_size_count") - batches_before
    assert batches < len(files), "every request ran alone: no batching"
    assert batching_server.metric("mnistkit_batch_size_bucket", le="1") == 0  # not one ran alone


def test_overload_is_503_with_retry_after_and_the_queue_recovers(
    batching_server: Server, model: Path, images: list[Path]
) -> None:
    """--max-queue 8: six inputs wait for a batch (a 2-file request is on its way); three more
    cannot be queued (503); the 2 files arrive, fill the batch, and both waiting requests are
    answered."""
    coming = HeldRequest(batching_server, images[6:8])
    batching_server.wait_until(
        "a request arriving", lambda: batching_server.metric("mnistkit_requests_arriving") == 1
    )
    answers: dict[str, Any] = {}
    first = threading.Thread(target=lambda: answers.update(a=batching_server.predict(images[:6])))
    first.start()
    batching_server.wait_until(
        "6 inputs queued", lambda: batching_server.metric("mnistkit_queue_inputs") == 6
    )
    status, headers, data = batching_server.predict(images[7:10])
    assert status == 503, data
    assert data["problem"] == "overloaded" and "--max-queue" in data["error"]
    assert headers["retry-after"].isdigit()
    coming.send_rest()
    status, data = coming.answer()
    first.join(150)
    assert status == 200, data
    assert_same(data["predictions"], reference(model, images[6:8]))
    assert answers["a"][0] == 200
    assert_same(answers["a"][2]["predictions"], reference(model, images[:6]))


def test_sigterm_lets_the_requests_in_flight_finish_then_exits_0(
    model: Path, images: list[Path], tmp_path: Path
) -> None:
    """One request waits for a batch (another is arriving, --max-wait-ms 60000): SIGTERM must answer
    it now, take the other one's body, answer it too, and exit 0."""
    server = start_server(model, tmp_path / "server.log", "--max-batch", "8", "--max-wait-ms", "60000")
    try:
        coming = HeldRequest(server, images[1:2])
        server.wait_until("a request arriving", lambda: server.metric("mnistkit_requests_arriving") == 1)
        answers: dict[str, Any] = {}
        waiting = threading.Thread(target=lambda: answers.update(a=server.predict(images[:1])))
        waiting.start()
        server.wait_until("an input queued", lambda: server.metric("mnistkit_queue_inputs") == 1)
        server.proc.send_signal(signal.SIGTERM)
        waiting.join(150)
        status, _, data = answers["a"]
        assert status == 200, data
        assert_same(data["predictions"], reference(model, images[:1]))
        coming.send_rest()
        status, data = coming.answer()
        assert status == 200, data
        assert_same(data["predictions"], reference(model, images[1:2]))
        assert server.proc.wait(60) == 0, server.log.read_text()
        assert "Traceback" not in server.log.read_text()
    finally:
        stop(server)


def test_without_the_serve_extra_it_says_what_to_install(cli, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"never read")
    res = cli("serve", model, prelude="import sys; sys.modules['uvicorn'] = None")
    assert res.returncode == 1, res.stderr
    assert "pip install 'mnistkit[serve]'" in res.stderr and "uvicorn" in res.stderr
    assert "Traceback" not in res.stderr


# ----------------------------------------------------------------------------------- the page
def test_page_upload_and_drawing_in_a_real_browser(
    browser, server: Server, model: Path, images: list[Path], tmp_path: Path
) -> None:
    page = browser.open(server.url + "/")
    tab = page.page
    tab.set_input_files("#files", str(images[3]))
    tab.wait_for_selector("#results .pred-class")
    expected = reference(model, [images[3]])[0]
    assert tab.inner_text("#results .pred-class") == expected["class"]
    assert tab.locator("#results .row").count() == 5  # the top 5 classes, with bars
    # draw a stroke on the canvas and classify it
    box = tab.locator("#canvas").bounding_box()
    tab.mouse.move(box["x"] + 140, box["y"] + 40)
    tab.mouse.down()
    tab.mouse.move(box["x"] + 140, box["y"] + 240, steps=12)
    tab.mouse.up()
    tab.click("#classify")
    tab.wait_for_function("document.querySelector('#results b')?.textContent === 'drawing.png'")
    drawn = tab.inner_text("#results .pred-class")
    assert drawn in json.loads((model.parent / "model.json").read_text())["classes"]
    assert tab.inner_text("#error") == ""
    assert page.errors == []
    assert page.external_requests(allowed_origin=server.url) == []
    shot = page.screenshot(tmp_path / "serve-page.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.close()


def test_serving_a_run_exports_again_when_the_checkpoint_is_newer(
    run: Path, model: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A run that trained on after its export (a --resume, more epochs) is served from its new
    checkpoint, not from the old file: ``serve RUN_DIR`` exports again; an up-to-date export is
    served as it is."""
    import shutil

    from mnistkit.serve.config import model_to_serve

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    onnx, ckpt = copy / "export" / "model.onnx", copy / "best.pt"
    assert ckpt.is_file(), sorted(p.name for p in copy.rglob("*.pt"))
    hour_ago = ckpt.stat().st_mtime - 3600
    os.utime(onnx, (hour_ago, hour_ago))  # exported an hour before the checkpoint was written

    assert model_to_serve(copy) == onnx
    assert "is older than" in capfd.readouterr().err
    assert onnx.stat().st_mtime >= ckpt.stat().st_mtime  # a new export of the current checkpoint
    assert json.loads((copy / "export" / "model.json").read_text())["checkpoint"] == "best"

    before = onnx.stat().st_mtime_ns
    assert model_to_serve(copy) == onnx  # up to date now: served as it is
    assert onnx.stat().st_mtime_ns == before and "export" not in capfd.readouterr().err
