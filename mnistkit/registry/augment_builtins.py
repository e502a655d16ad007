"""Built-in augmentations for ``data.augment`` (declared as data; the ops live in data/augment.py).

Each entry's target ``mnistkit.data.augment:<name>`` is a factory ``f(**params) -> op`` and the op is
``op(x, generator) -> x`` on a raw training batch ``[N, C, H, W]`` (see :mod:`mnistkit.data.augment`).
Parameters are declared here with their ranges, so ``mnistkit validate`` checks them without
torch, and ``tests/test_registry.py`` checks them against the factories' signatures. Plugins add
their own with ``reg.augmentations.register(name, "module:factory", description, params)``.

``ranges`` (entry meta) names the ``float_pair`` parameters that are ``[low, high]`` ranges: the
recipe check refuses them reversed.
"""

from __future__ import annotations

from mnistkit.registry.core import Param, Registries

P = Param

_AUGMENTATIONS: list[tuple[str, str, dict[str, Param], tuple[str, ...]]] = [
    (
        "random_crop",
        "pad with zeros (black) and cut the original size at a random offset: a shift of up to "
        "padding pixels",
        {"padding": P("int", 2, "zeros added on each side = the largest shift in pixels", ge=0)},
        (),
    ),
    (
        "horizontal_flip",
        "mirror left-right with probability p (not for digits: a mirrored 2 is no 2)",
        {"p": P("float", 0.5, "probability per sample", ge=0, le=1)},
        (),
    ),
    (
        "vertical_flip",
        "mirror top-bottom with probability p",
        {"p": P("float", 0.5, "probability per sample", ge=0, le=1)},
        (),
    ),
    (
        "random_affine",
        "rotate, shift, zoom and shear about the centre (bilinear, black outside), as "
        "torchvision's RandomAffine",
        {
            "degrees": P("float", 0.0, "rotation drawn from [-degrees, degrees]", ge=0, le=180),
            "translate": P(
                "float_pair", (0.0, 0.0), "largest shift as a fraction of [width, height]", ge=0, le=1
            ),
            "scale": P("float_pair", (1.0, 1.0), "zoom factor drawn from [low, high]", gt=0),
            "shear": P("float", 0.0, "x-shear angle drawn from [-shear, shear] degrees", ge=0, lt=90),
        },
        ("scale",),
    ),
    (
        "random_erasing",
        "with probability p, fill one random rectangle (Zhong et al.; torchvision's RandomErasing)",
        {
            "p": P("float", 0.5, "probability per sample", ge=0, le=1),
            "scale": P(
                "float_pair", (0.02, 0.33), "erased area as a fraction of the image: [low, high]", gt=0, le=1
            ),
            "ratio": P("float_pair", (0.3, 3.3), "aspect ratio (height/width) range, log-uniform", gt=0),
            "value": P("float", 0.0, "fill, in [0, 1] pixel units (0 = black); audio: the feature value"),
        },
        ("scale", "ratio"),
    ),
]


def register_augmentations(reg: Registries) -> None:
    for name, desc, params, ranges in _AUGMENTATIONS:
        reg.augmentations.register(name, f"mnistkit.data.augment:{name}", desc, params, ranges=ranges)
