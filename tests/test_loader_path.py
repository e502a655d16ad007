"""``data.loader`` picks the path the training batches take, and the run takes that path (issue 8).

The two paths train identically by design (tests/test_fast_path.py), so comparing their metrics
cannot tell whether ``loader: dataloader`` was honoured or silently ignored. Here torch's
DataLoader is watched: with ``dataloader`` every epoch iterates it over the whole training set
(the epoch's order), with ``memory`` it is never iterated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch.utils.data

from mnistkit import session
from mnistkit.recipe.schema import load_recipe_text
from mnistkit.session import RunOptions

TINY = """\
name: loader-path
seed: 1
data: {dataset: digits, limit: 100, test_limit: 50, batch_size: 32}
model: {hidden: [16]}
optimizer: {name: sgd, lr: 0.05}
epochs: 2
train: {device: cpu, threads: 1, plots: false, checkpoint: false, progress: none}
"""


@pytest.mark.parametrize(
    ("loader", "epochs_served"),
    [("dataloader", [list(range(100))] * 2), ("memory", [])],
)
def test_the_loader_asked_for_is_the_loader_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader: str, epochs_served: list[list[int]]
) -> None:
    served: list[list[int]] = []  # the sample indices each DataLoader iteration visits
    original = torch.utils.data.DataLoader.__iter__

    def watched(self: torch.utils.data.DataLoader, *args: Any, **kwargs: Any) -> Any:
        served.append(sorted(self.sampler))  # type: ignore[arg-type]
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__", watched)
    sets = [f"data.loader={loader}"] + (["data.num_workers=0"] if loader == "dataloader" else [])
    recipe = load_recipe_text(TINY, "tiny.yaml", sets)
    result = session.run(recipe, RunOptions(out=tmp_path / "run", progress="none"))
    assert len(result.rows) == 2
    assert served == epochs_served
