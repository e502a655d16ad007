"""``mnistkit serve``: an exported model behind HTTP (Starlette on uvicorn), with ONNX Runtime.

* :mod:`mnistkit.serve.config` -- the settings (defaults live here, once) and the model to serve:
  a model.onnx, or a run directory's export (exported first, in a child process, if missing).
* :mod:`mnistkit.serve.app` -- the ASGI app: ``POST /predict``, ``GET /health``, ``/metadata``,
  ``/metrics`` (Prometheus text), ``/openapi.json`` and the page at ``/``.
* :mod:`mnistkit.serve.uploads` -- request bodies to inputs, with the limits (size, count, type).
* :mod:`mnistkit.serve.batcher` -- dynamic batching: concurrent inputs in one ONNX Runtime call,
  a bounded queue (503 beyond it).
* :mod:`mnistkit.serve.metrics` -- counters and histograms in the Prometheus text format.
* :mod:`mnistkit.serve.server` -- uvicorn, workers, graceful shutdown (SIGTERM/Ctrl-C: exit 0).

Files are decoded by the functions ``mnistkit predict`` uses (:mod:`mnistkit.evaluation.inputs`)
and the model is run through :mod:`mnistkit.export.runtime`, so the answers are predict's. Nothing
here imports torch (import-linter contract; the tests run the server with torch unimportable).
See docs/serving.md.
"""
