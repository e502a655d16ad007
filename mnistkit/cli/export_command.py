"""The ``mnistkit export`` command (registered onto the main app by :func:`register`).

The work is in :mod:`mnistkit.export`; torch is imported only when the command runs, so
``mnistkit --help`` stays torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mnistkit.cli.run_commands import Checkpoint as _Checkpoint
from mnistkit.cli.run_commands import CheckpointOpt, RunDirArg, _console
from mnistkit.export.metadata import DEFAULT_TOLERANCE


def register(app: typer.Typer, guarded: Callable[[Callable[[], Any]], Any]) -> None:
    @app.command()
    def export(
        run_dir: RunDirArg,
        checkpoint: CheckpointOpt = _Checkpoint.best,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                "-o",
                help="The .onnx file to write (default RUN_DIR/export/model.onnx); model.json beside it.",
                metavar="FILE.onnx",
            ),
        ] = None,
        opset: Annotated[
            int | None,
            typer.Option(
                "--opset",
                min=1,
                help="ONNX operator set (default: the exporter's, 20 in torch 2.14).",
                metavar="N",
            ),
        ] = None,
        data_dir: Annotated[
            Path | None,
            typer.Option(
                "--data-dir",
                "-d",
                help="Folder with the dataset files, for the verification on test samples "
                "(default: the run's own --data-dir, if any).",
                metavar="DIR",
            ),
        ] = None,
        tolerance: Annotated[
            float,
            typer.Option(
                "--tolerance",
                help="Largest |logit difference| between ONNX Runtime and torch that passes verification.",
                metavar="T",
            ),
        ] = DEFAULT_TOLERANCE,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print model.json's content (and the files written) as JSON.")
        ] = False,
    ) -> None:
        """Export a run's model to ONNX, with its input normalization and class names inside.

        Images go in as uint8 [N, C, H, W] (0-255), audio as float32 log-mel
        [N, 1, n_mels, frames]; outputs: logits and probabilities, any batch size.
        Before writing, ONNX Runtime is checked against torch on real test samples
        (exit 1 if the logits differ by more than --tolerance). Run the model with
        `mnistkit predict model.onnx FILE...` (no torch) or any ONNX runtime:
        see docs/export.md."""

        def body() -> None:
            from mnistkit.export.onnx_export import export_run

            result = export_run(run_dir, checkpoint.value, out, opset, data_dir, tolerance)
            if as_json:
                typer.echo(json.dumps(result, indent=2))
                return
            from rich.markup import escape

            v = result["verification"]
            con = _console()
            shape = ", ".join(str(n) for n in result["input_shape"])
            con.print(
                f"exported {escape(result['recipe_name'])} {result['checkpoint']}.pt "
                f"({escape(result['checkpoint_when'])}) to ONNX opset {result['onnx_opset']}, "
                f"{result['bytes'] / 1e6:.2f} MB"
            )
            con.print(
                f"{'input:':<13} {result['input_name']} {result['input_dtype']} \\[{shape}] "
                f"({result['input_kind']})"
            )
            con.print(f"{'outputs:':<13} {', '.join(result['outputs'])} \\[batch, {len(result['classes'])}]")
            con.print(
                f"{'verified:':<13} ONNX Runtime vs torch on {v['samples']} test samples "
                f"(batch sizes {', '.join(map(str, v['batch_sizes']))}): max |logit diff| "
                f"{v['max_abs_logit_diff']:.2g} (tolerance {v['tolerance']:g}), "
                f"classes agree {v['agreement']:.2%}"
            )
            acc = result["checkpoint_test_accuracy"]
            if acc is not None:
                con.print(f"{'test acc:':<13} {acc:.2%} (the checkpoint's, in training)")
            for path in result["saved"]:
                con.print(f"{'saved:':<13} {escape(path)}")

        guarded(body)
