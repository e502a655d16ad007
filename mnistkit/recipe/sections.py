"""The recipe's sections as pydantic models: every field, its default and its docstring.

Defaults live in these field declarations and nowhere else; each field's docstring is its
documentation (JSON Schema, ``docs/recipe.md`` and ``mnistkit fields`` are generated from it).
Registry-backed keys (``loss``, ``optimizer``, ``scheduler``, ``model.activation``, ``model.layers``,
``data.dataset``) are typed ``Any`` here; :mod:`mnistkit.recipe.schema` generates their real types
from the registries.
"""

# No `from __future__ import annotations`: pydantic would then evaluate every field's annotation
# from its string (a compile each) when the classes are built at start-up.
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, field_validator

from mnistkit.recipe.docstrings import docstrings_as_descriptions

PosInt = Annotated[StrictInt, Field(ge=1)]
#: ``expect:``'s conditions by name; null (``--set expect=null``) means none.
Expectations = Annotated[dict[str, str | int | float], BeforeValidator(lambda v: {} if v is None else v)]


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, docstrings are documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Field docstrings -> descriptions, before pydantic collects the fields (what pydantic's
        # use_attribute_docstrings does, at a fraction of its start-up cost: recipe/docstrings.py).
        # The classes generated from these (recipe/schema) give theirs in Field(description=...).
        if cls.__module__ == __name__:
            docstrings_as_descriptions(cls)
        super().__init_subclass__(**kwargs)


#: For the three sections whose registry-backed keys the generated classes (recipe/schema) type:
#: only those classes validate, so pydantic builds a validator for them, not for these bases.
_BASE_OF_GENERATED = ConfigDict(defer_build=True)


class Normalize(Section):
    """Explicit normalization: x = (pixel/255 - mean) / std, one value per channel."""

    mean: Annotated[list[float], Field(min_length=1)]
    """Per-channel mean of the [0, 1]-scaled inputs."""
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)]
    """Per-channel standard deviation (> 0)."""


class LogMel(Section):
    """Log-mel spectrogram features for audio datasets, computed once with librosa and cached."""

    type: Literal["log_mel"] = "log_mel"
    """Feature kind (only log_mel for now)."""
    sample_rate: PosInt = 8000
    """Audio is resampled to this rate (Hz) on load. FSDD is recorded at 8 kHz."""
    n_fft: PosInt = 2048
    """FFT window length in samples (the tutorial's 2048)."""
    hop_length: PosInt = 512
    """Samples between successive frames (the tutorial's 512)."""
    n_mels: PosInt = 128
    """Number of mel bands: the feature map's height."""
    frames: PosInt = 32
    """Clips are padded or cropped to this many frames: the feature map's width."""
    fmax: Annotated[float, Field(gt=0)] | None = None
    """Highest mel band edge in Hz (default: sample_rate / 2)."""


class ImageSpec(Section):
    """How image files are converted (image_folder): once, at load; predict does the same."""

    channels: Literal[1, 3] = 1
    """1: grey, 3: RGB. Every image is converted to this (transparent pixels become black)."""
    size: tuple[PosInt, PosInt] = (28, 28)
    """[height, width] every image is resized to (bilinear; the aspect ratio is not kept). With
    channels this is the model's input shape, known before any file is read."""


class DataSection(Section):
    """Where the examples come from and how they are batched."""

    model_config = _BASE_OF_GENERATED

    dataset: str
    """Registry name of the dataset (see `mnistkit list datasets`)."""
    root: str | None = None
    """Folder with the dataset's files. Overridden by --data-dir; else $MNISTKIT_DATA; else a
    per-user cache folder."""
    download: StrictBool = True
    """Download the dataset if its files are not found (only datasets that support it)."""
    batch_size: PosInt = 64
    """Training examples per optimizer step."""
    eval_batch_size: PosInt = 1000
    """Examples per forward pass during evaluation: large, since no gradients are kept."""
    shuffle: StrictBool = True
    """Visit the training set in a fresh random order every epoch."""
    sampler: Literal["epoch", "balanced"] = "epoch"
    """'epoch': every training sample once per epoch (in a fresh order when shuffle is true).
    'balanced': for imbalanced classes, each epoch draws as many samples as the training split
    holds, with replacement, every class equally likely (a sample's chance is 1 / (classes x its
    class's count)): small classes repeat, large ones are subsampled. Seeded by `seed`; --resume
    continues the same draws; the batches are split across --nproc processes as usual."""
    drop_last: StrictBool = False
    """Drop the last partial training batch of each epoch (default keeps it: every sample is seen
    once per epoch)."""
    limit: PosInt | None = None
    """Use only the first N training examples (quick runs and tests)."""
    test_limit: PosInt | None = None
    """Use only the first N test examples."""
    val_split: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """Fraction of the training set held out (seeded) as a validation set, evaluated every epoch."""
    normalize: Literal["auto", "none"] | Normalize = "auto"
    """'auto' uses the dataset's own mean/std (MNIST: 0.1307/0.3081), 'none' only scales to
    [0, 1], or give {mean: [...], std: [...]}."""
    loader: Literal["memory", "dataloader"] = "memory"
    """'memory': decode once into one tensor on the training device and batch by indexing (fast).
    'dataloader': torch DataLoader over the same tensors with workers (for data that does not fit
    in memory, or to compare)."""
    num_workers: Annotated[StrictInt, Field(ge=0)] | None = None
    """DataLoader worker processes (loader: dataloader); default 0: for tensors already in memory
    workers only add inter-process copies (docs/performance.md)."""
    cache: Literal["auto", "memory", "mmap"] = "auto"
    """image_folder and audio_folder: how the decoded images or features (one uncompressed data
    file in the user cache) are read. 'memory': read whole into memory once (fastest batches).
    'mmap': batches read their rows from the file and the OS page cache keeps what memory allows
    (for folders larger than memory). 'auto': memory when the decoded data takes at most 1/4 of
    the memory available at the start, else mmap. The run header says which was used and why."""
    features: LogMel | None = None
    """Audio feature extraction (audio datasets only; defaults apply when omitted)."""
    image: ImageSpec | None = None
    """image_folder: channels and size images are converted to (defaults apply when omitted)."""
    skip_bad_files: StrictBool = False
    """Audio and image folders: skip unreadable files (they are listed and counted) instead of
    stopping before training."""
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """audio_folder / image_folder without train/ and test/ sub-folders: fraction of each class
    put in the test set (seeded, by file name)."""
    augment: list[Any] = []
    """Random changes to every training batch, applied in order on the training device (never
    at evaluation), e.g. [{type: random_crop, padding: 2}, {type: horizontal_flip}]; see
    `mnistkit list augmentations`. Seeded by `seed`; --resume continues the same stream."""


class ModelSection(Section):
    """The network: either the MLP shorthand (hidden + activation) or a list of layers."""

    model_config = _BASE_OF_GENERATED

    hidden: Annotated[list[PosInt] | None, Field(min_length=1)] = None
    """MLP shorthand: widths of the hidden layers; input size and class count come from the
    dataset. [512, 256, 128, 64] is the tutorial's 784-512-256-128-64-10 network."""
    activation: Any = "relu"
    """Activation after every hidden layer (MLP shorthand): a name or {name: ..., params}."""
    output_activation: str | None = None
    """Activation after the last layer. Leave unset with cross_entropy (it needs raw logits);
    with nll, log_softmax is appended automatically."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """MLP shorthand: dropout probability after every hidden activation."""
    layers: Annotated[list[Any] | None, Field(min_length=1)] = None
    """Explicit layer list, [{type: conv2d, out_channels: 32, kernel_size: 3}, ...]. Sizes that
    follow from the input (in_features, in_channels, input_size) are inferred."""


class EarlyStopping(Section):
    """Stop when the monitored metric has not improved for `patience` epochs."""

    patience: PosInt = 3
    """Epochs without improvement before stopping."""
    metric: Literal["auto", "train_loss", "test_loss", "test_acc", "val_loss", "val_acc"] = "auto"
    """Metric to monitor; 'auto': val_loss with a validation split, else test_loss."""
    mode: Literal["auto", "min", "max"] = "auto"
    """'auto': max for accuracies, min for losses."""
    min_delta: Annotated[float, Field(ge=0)] = 0.0
    """Smallest change that counts as an improvement."""


class MlflowSettings(Section):
    """MLflow tracking (`train.track: [mlflow]` or `run --track mlflow`); see docs/tracking.md."""

    experiment: Annotated[str, Field(min_length=1)] = "mnistkit"
    """MLflow experiment the run is logged in (created when missing)."""
    tracking_uri: Annotated[str, Field(min_length=1)] | None = None
    """Where runs are logged: a tracking server (http://host:5000) or a database
    (sqlite:///mlflow.db). $MLFLOW_TRACKING_URI wins over this; with neither, MLflow's own default
    (an embedded store in the current folder). No credentials here (the recipe is copied into the
    run directory): give them in $MLFLOW_TRACKING_URI or $MLFLOW_TRACKING_USERNAME/PASSWORD."""
    run_name: Annotated[str, Field(min_length=1)] | None = None
    """MLflow run name; default: the run directory's name."""
    tags: dict[str, str] = {}
    """Extra tags on the MLflow run, e.g. {team: vision}."""
    artifacts: list[Literal["recipe", "metrics", "env", "plots", "model", "onnx"]] = [
        "recipe",
        "metrics",
        "env",
        "plots",
    ]
    """Files copied to the MLflow run: recipe (recipe.yaml), metrics (metrics.csv), env
    (env.json), plots (plots/*.png), model (best.pt: never by default; it can be large), onnx
    (export/model.onnx from `mnistkit export`, logged as an MLflow ONNX model with its
    input/output signature once it exists: `mnistkit track RUN_DIR` after the export; never by
    default)."""

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, uri: str | None) -> str | None:
        if uri is not None and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", uri):
            raise ValueError(
                "no password in the recipe (it is copied into the run directory and printed): "
                "give the URI in $MLFLOW_TRACKING_URI, or the user and password in "
                "$MLFLOW_TRACKING_USERNAME and $MLFLOW_TRACKING_PASSWORD"
            )
        return uri


class TrainSection(Section):
    """How the loop runs: device, precision, stopping rules, checkpoints, display."""

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """'auto' picks CUDA, then MPS, then CPU."""
    threads: PosInt | Literal["auto"] | None = "auto"
    """CPU threads for torch. 'auto' (null means the same) times the real training step at 1, 2,
    ... up to this process's share of the cores in the first ~24 steps (they train as usual),
    keeps the most threads unless fewer are at least 1.5x faster per step, and probes again at
    the next epoch start when the load average has moved by more than 1; the run header and
    env.json say what it chose and why. Aim: near the best
    fixed count on a quiet and on a busy machine; measured so far only under heavy load, where it
    missed that in some conditions (docs/performance.md, "Threads that fit the machine"). With auto,
    CPU results are reproducible only up to the thread count chosen (torch splits some sums by
    thread): give a number for bit-identical reruns; a number is obeyed as given. Every run also
    sets OMP_WAIT_POLICY=PASSIVE and KMP_BLOCKTIME=0 unless you set them: on a busy machine the
    old spin-waiting made 2-thread mlp5 epochs 17-96 s instead of ~2 s."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocast for forward passes (CUDA; on CPU only if supported). Weights stay fp32.
    Never the default. Measured on a CPU with AVX-512 BF16 (docs/performance.md): faster than fp32
    at equal accuracy for mlp5 and cnn (10 epochs, within 0.3 points); without native bf16 on the
    CPU it is slower."""
    compile: Literal["auto"] | StrictBool = "auto"
    """torch.compile the training step (normalization, forward, loss and backward as one graph):
    true, false, or 'auto': compile when the run has enough steps to earn the compile time back
    (the run header says what was decided and why). On CPU it needs a C++ compiler; without one
    the run trains eagerly, with a note. Compile time is reported apart from training time."""
    target_accuracy: Annotated[float, Field(gt=0, le=1)] | None = None
    """Stop as soon as test (or validation) accuracy reaches this fraction, e.g. 0.88."""
    grad_clip: Annotated[float, Field(gt=0)] | None = None
    """Clip the global gradient norm to this value."""
    early_stopping: EarlyStopping | None = None
    """Stop when a metric stops improving (see EarlyStopping)."""
    best_metric: Literal["auto", "test_acc", "test_loss", "val_acc", "val_loss"] = "auto"
    """Metric that picks the `best` checkpoint; 'auto': val_acc with a validation split, else
    test_acc."""
    checkpoint: StrictBool = True
    """Write `last` and `best` checkpoints to the run directory (needed for --resume)."""
    tensorboard: StrictBool = False
    """Also log metrics to TensorBoard (run directory / tb); needs the tensorboard package."""
    track: list[Literal["mlflow", "tensorboard"]] = []
    """Experiment trackers the run is logged to, e.g. [mlflow] (settings: train.mlflow; needs
    pip install 'mnistkit[mlflow]'); tensorboard is the same as tensorboard: true. Also
    `run --track mlflow`. See docs/tracking.md."""
    mlflow: MlflowSettings = MlflowSettings()
    """MLflow settings (used when track lists mlflow)."""
    plots: StrictBool = True
    """Write PNG plots (curves, confusion matrix, worst mistakes) at the end of the run."""
    progress: Literal["auto", "rich", "plain", "none"] = "auto"
    """'auto': live Rich display on a terminal, plain lines otherwise (CI logs)."""


class RecipeBase(Section):
    """One training run. Only `data` and `model` are required."""

    model_config = _BASE_OF_GENERATED

    base: str | None = None
    """A recipe file this one builds on (path relative to this file): its keys are merged
    under this file's, mappings key by key, anything else replaced. Chains are allowed, cycles
    are not."""
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)] | None = None
    """Run name (run directories are <name>-<timestamp>); default: the recipe file's name."""
    seed: Annotated[StrictInt, Field(ge=0)] = 0
    """Seeds weights, shuffling and splits: the same seed gives the same run on CPU."""
    seeds: Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)] | None = None
    """Train the recipe once per seed, e.g. [0, 1, 2]: a group of runs (one run directory per
    seed) with the mean, standard deviation, min and max of every metric (docs/runs.md). Like
    `mnistkit run --seeds N`, which uses seed, seed+1, ...; each run's own `seed` is one of these."""
    plugins: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]] = []
    """Python modules whose register(reg) function adds activations, layers, optimizers, losses
    or datasets (imported from the recipe's folder or sys.path)."""
    data: DataSection
    """Dataset, batching and preprocessing."""
    model: ModelSection
    """The network."""
    loss: Any = "cross_entropy"
    """Training objective: a name or {name: ..., params}; see `mnistkit list losses`."""
    optimizer: Any = "adam"
    """Optimizer and its parameters, e.g. {name: sgd, lr: 0.01, momentum: 0.5}."""
    scheduler: Any = None
    """Learning-rate schedule, e.g. {name: onecycle, max_lr: 0.1}; default: constant lr."""
    epochs: PosInt = 10
    """Passes over the training set."""
    train: TrainSection = TrainSection()
    """Loop options."""

    expect: Expectations = {}
    """Conditions the finished run must meet, checked and shown at its end and recorded in
    status.json; one missed makes `run` and `check` exit with code 4. E.g. {test_acc: ">= 0.97",
    train_seconds: "<= 60", best_epoch: "<= 8"}. Forms: ">= X", "<= X", "> X", "< X", "== X",
    "between X and Y" (quote them: YAML reads a leading > as a block of text). Names: a
    metrics.csv column (train_loss, train_acc, val_loss, val_acc, test_loss, test_acc, lr,
    samples_per_s) means its value at the last epoch; best_<column> (best_test_acc,
    best_val_loss, ...) the best over all epochs; best_epoch (the epoch of best.pt), epochs_done,
    train_seconds (training time, evaluation included), epoch_seconds (mean per epoch).
    Accuracies are fractions as in metrics.csv (">= 0.97") or percentages with % (">= 97%").
    null: none (--set expect=null drops a recipe's expectations)."""

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        repeated = sorted({s for s in seeds or [] if (seeds or []).count(s) > 1})
        if repeated:
            raise ValueError(f"each seed once: {', '.join(map(str, repeated))} repeated")
        return seeds
