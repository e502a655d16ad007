"""The built-in registry entries, declared as data.

Every target is a ``"module:attr"`` string, so nothing here imports torch. Each optimizer,
scheduler, loss and layer declares its parameters (type, default, range); the recipe schema is
generated from these declarations and ``tests/test_registry.py`` checks every declaration
against the real signature of its target. To add a built-in, add an entry here; to add your own
without editing mnistkit, see docs/extending.md.
"""

from __future__ import annotations

from mnistkit.registry.core import REQUIRED, Param, Registries

P = Param

# --- activations ------------------------------------------------------------------------------
_ACTIVATIONS: list[tuple[str, str, str, dict[str, Param]]] = [
    ("relu", "torch.nn:ReLU", "max(0, x): the tutorial's choice", {}),
    (
        "leaky_relu",
        "torch.nn:LeakyReLU",
        "ReLU with a small slope for x < 0",
        {"negative_slope": P("float", 0.01, "slope for x < 0", ge=0)},
    ),
    ("elu", "torch.nn:ELU", "exponential linear unit", {"alpha": P("float", 1.0, "scale", gt=0)}),
    (
        "gelu",
        "torch.nn:GELU",
        "Gaussian error linear unit (transformers)",
        {"approximate": P("str", "none", "exact or tanh approximation", choices=("none", "tanh"))},
    ),
    ("silu", "torch.nn:SiLU", "x * sigmoid(x), a.k.a. swish", {}),
    ("mish", "torch.nn:Mish", "x * tanh(softplus(x))", {}),
    ("tanh", "torch.nn:Tanh", "hyperbolic tangent, output in (-1, 1)", {}),
    ("sigmoid", "torch.nn:Sigmoid", "logistic function, output in (0, 1)", {}),
    (
        "softplus",
        "torch.nn:Softplus",
        "smooth ReLU: log(1 + exp(x))",
        {"beta": P("float", 1.0, "sharpness", gt=0), "threshold": P("float", 20.0, "linear above")},
    ),
]

# --- losses -----------------------------------------------------------------------------------
_CLASS_WEIGHTS = P(
    "class_weights",
    None,
    "weight of each class in the loss: auto = inverse frequency in the training split "
    "(n / (classes x count), shown in the run header), or one weight per class; null: all 1",
    nullable=True,
    target_name="weight",
)
_LOSSES: list[tuple[str, str, str, dict[str, Param], dict[str, object]]] = [
    (
        "cross_entropy",
        "torch.nn:CrossEntropyLoss",
        "softmax cross-entropy on raw logits (= log_softmax + nll); the last layer stays linear",
        {
            "label_smoothing": P("float", 0.0, "mix targets with the uniform distribution", ge=0, lt=1),
            "class_weights": _CLASS_WEIGHTS,
        },
        {"expects": "logits"},
    ),
    (
        "nll",
        "torch.nn:NLLLoss",
        "negative log-likelihood of log-probabilities; the model ends in log_softmax",
        {"class_weights": _CLASS_WEIGHTS},
        {"expects": "log_probs"},
    ),
]

# --- optimizers -------------------------------------------------------------------------------
_WD = P("float", 0.0, "L2 penalty / weight decay", ge=0)
_BETAS = P("float_pair", (0.9, 0.999), "decay rates of the moment estimates", ge=0, lt=1)
_OPTIMIZERS: list[tuple[str, str, str, dict[str, Param]]] = [
    (
        "sgd",
        "torch.optim:SGD",
        "stochastic gradient descent with optional (Nesterov) momentum",
        {
            "lr": P("float", 0.001, "learning rate", gt=0),
            "momentum": P("float", 0.0, "momentum factor", ge=0, lt=1),
            "dampening": P("float", 0.0, "dampening for momentum", ge=0, le=1),
            "weight_decay": _WD,
            "nesterov": P("bool", False, "use Nesterov momentum (needs momentum > 0)"),
        },
    ),
    (
        "adam",
        "torch.optim:Adam",
        "adaptive moments (Kingma & Ba)",
        {
            "lr": P("float", 0.001, "learning rate", gt=0),
            "betas": _BETAS,
            "eps": P("float", 1e-8, "denominator term for stability", gt=0),
            "weight_decay": _WD,
            "amsgrad": P("bool", False, "use the AMSGrad variant"),
        },
    ),
    (
        "adamw",
        "torch.optim:AdamW",
        "Adam with decoupled weight decay",
        {
            "lr": P("float", 0.001, "learning rate", gt=0),
            "betas": _BETAS,
            "eps": P("float", 1e-8, "denominator term for stability", gt=0),
            "weight_decay": P("float", 0.01, "decoupled weight decay", ge=0),
            "amsgrad": P("bool", False, "use the AMSGrad variant"),
        },
    ),
    (
        "rmsprop",
        "torch.optim:RMSprop",
        "divide the gradient by a running average of its magnitude",
        {
            "lr": P("float", 0.01, "learning rate", gt=0),
            "alpha": P("float", 0.99, "smoothing constant", gt=0, lt=1),
            "eps": P("float", 1e-8, "denominator term for stability", gt=0),
            "weight_decay": _WD,
            "momentum": P("float", 0.0, "momentum factor", ge=0, lt=1),
            "centered": P("bool", False, "normalize by the estimated variance"),
        },
    ),
    (
        "adagrad",
        "torch.optim:Adagrad",
        "per-parameter learning rates from accumulated squared gradients",
        {
            "lr": P("float", 0.01, "learning rate", gt=0),
            "lr_decay": P("float", 0.0, "learning-rate decay", ge=0),
            "weight_decay": _WD,
            "eps": P("float", 1e-10, "denominator term for stability", gt=0),
        },
    ),
]

# --- schedulers (targets are factories in mnistkit.build.schedules; see that module) -----------------
_SCHEDULERS: list[tuple[str, str, str, dict[str, Param]]] = [
    (
        "constant",
        "mnistkit.build.schedules:constant",
        "keep the optimizer's learning rate (optionally after a linear warm-up)",
        {"warmup_epochs": P("float", 0.0, "linear warm-up length in epochs", ge=0)},
    ),
    (
        "step",
        "mnistkit.build.schedules:step",
        "multiply the learning rate by gamma every step_size epochs",
        {
            "step_size": P("int", 1, "epochs between decays", ge=1),
            "gamma": P("float", 0.1, "decay factor", gt=0, le=1),
        },
    ),
    (
        "cosine",
        "mnistkit.build.schedules:cosine",
        "linear warm-up, then cosine decay to min_lr_ratio * lr, updated every batch",
        {
            "warmup_epochs": P("float", 0.0, "linear warm-up length in epochs", ge=0),
            "min_lr_ratio": P("float", 0.0, "final lr as a fraction of the base lr", ge=0, le=1),
        },
    ),
    (
        "onecycle",
        "mnistkit.build.schedules:onecycle",
        "Smith's 1cycle: warm up to max_lr, then anneal far below it, updated every batch",
        {
            "max_lr": P("float", REQUIRED, "peak learning rate", gt=0),
            "pct_start": P("float", 0.3, "fraction of training spent warming up", gt=0, lt=1),
            "div_factor": P("float", 25.0, "initial lr = max_lr / div_factor", gt=0),
            "final_div_factor": P("float", 1e4, "final lr = initial lr / this", gt=0),
            "anneal_strategy": P("str", "cos", "annealing shape", choices=("cos", "linear")),
            "cycle_momentum": P("bool", True, "cycle momentum inversely to lr (SGD/Adam)"),
        },
    ),
    (
        "plateau",
        "mnistkit.build.schedules:plateau",
        "multiply the lr by factor when the monitored metric stops improving",
        {
            "factor": P("float", 0.1, "decay factor", gt=0, lt=1),
            "patience": P("int", 2, "epochs without improvement before decaying", ge=0),
            "metric": P(
                "str",
                "test_loss",
                "metric to watch",
                choices=("train_loss", "test_loss", "test_acc", "val_loss", "val_acc"),
            ),
            "min_lr": P("float", 0.0, "lower bound on the lr", ge=0),
        },
    ),
]


# --- datasets ---------------------------------------------------------------------------------
# `reads`: the optional data keys (DATASET_OPTIONS in recipe/schema/_checks.py) the loader uses; a key it does
# not read is an error in a recipe rather than silently ignored.
_MNIST_LIKE = {"shape": (1, 28, 28), "num_classes": 10, "kind": "image", "reads": ()}
_DATASETS: list[tuple[str, str, str, dict[str, object]]] = [
    (
        "mnist",
        "mnistkit.data.sources:mnist",
        "MNIST handwritten digits, 60k train / 10k test, 28x28 grey (torchvision files)",
        {**_MNIST_LIKE, "download": True},
    ),
    (
        "fashion_mnist",
        "mnistkit.data.sources:fashion_mnist",
        "Fashion-MNIST clothing, 60k train / 10k test, 28x28 grey (also Debian's copy)",
        {**_MNIST_LIKE, "download": True},
    ),
    (
        "kmnist",
        "mnistkit.data.sources:kmnist",
        "Kuzushiji-MNIST cursive Japanese, 60k train / 10k test, 28x28 grey",
        {**_MNIST_LIKE, "download": True},
    ),
    (
        "digits",
        "mnistkit.data.sources:digits",
        "scikit-learn's bundled 8x8 digits (1,797 images): no files, no network, seconds",
        {"shape": (1, 8, 8), "num_classes": 10, "kind": "image", "download": False, "reads": ()},
    ),
    (
        "fsdd",
        "mnistkit.data.sources:fsdd",
        "Free Spoken Digit Dataset: folder of {digit}_{speaker}_{index}.wav, official split",
        {"shape": None, "num_classes": 10, "kind": "audio", "download": False, "reads": ("skip_bad_files",)},
    ),
    (
        "audio_folder",
        "mnistkit.data.sources:audio_folder",
        "any folder of audio files with one sub-folder per class",
        {
            "shape": None,
            "num_classes": None,
            "kind": "audio",
            "download": False,
            "reads": ("skip_bad_files", "test_fraction", "cache"),
        },
    ),
    (
        "image_folder",
        "mnistkit.data.sources:image_folder",
        "any folder of images (PNG, JPEG, BMP, GIF, WebP, TIFF) with one sub-folder per class",
        {
            "shape": None,  # from data.image
            "num_classes": None,
            "kind": "image",
            "download": False,
            "reads": ("skip_bad_files", "test_fraction", "image", "cache"),
        },
    ),
]


def register_builtins(reg: Registries) -> None:
    """Fill ``reg`` with mnistkit's own entries (called once by ``registries()``)."""
    for name, target, desc, params in _ACTIVATIONS:
        reg.activations.register(name, target, desc, params)
    for name, target, desc, params, meta in _LOSSES:
        reg.losses.register(name, target, desc, params, **meta)
    for name, target, desc, params in _OPTIMIZERS:
        reg.optimizers.register(name, target, desc, params)
    for name, target, desc, params in _SCHEDULERS:
        reg.schedulers.register(name, target, desc, params)
    for name, target, desc, meta in _DATASETS:
        reg.datasets.register(name, target, desc, **meta)
    from mnistkit.registry.augment_builtins import register_augmentations
    from mnistkit.registry.layer_builtins import register_layers

    register_layers(reg)
    register_augmentations(reg)
