"""Export a trained run for deployment: one ONNX file with the preprocessing and labels inside.

* :mod:`mnistkit.export.onnx_export` -- ``mnistkit export RUN_DIR``: the run's model (torch) to
  ONNX with the dynamo exporter, normalization inside the graph, metadata, verified against
  torch with ONNX Runtime before anything is written.
* :mod:`mnistkit.export.runtime` -- ``mnistkit predict model.onnx FILE...``: ONNX Runtime only;
  importing it (and running it) never imports torch.
* :mod:`mnistkit.export.evaluate` -- ``mnistkit eval model.onnx``: the exported model's test
  accuracy (loads the dataset, which uses torch; the model runs in ONNX Runtime).
* :mod:`mnistkit.export.metadata` -- the metadata contract (``metadata_props`` and model.json).

The command itself is registered in :mod:`mnistkit.cli.export_command`. See docs/export.md.
"""
