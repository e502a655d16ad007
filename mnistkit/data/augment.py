"""Training-batch augmentation: vectorized over the batch, on the training device, seeded.

Each entry of ``data.augment`` names a factory here (declared in
:mod:`mnistkit.registry.augment_builtins`); the factory takes the entry's parameters and returns an op,
``op(x, generator) -> x``:

* ``x`` is a raw training batch ``[N, C, H, W]`` exactly as stored (uint8 pixels 0..255 for
  images, float32 for audio features), on the training device, *before* normalization, so a
  fill value of 0 is black, as with torchvision transforms applied before ``Normalize``;
* the op returns a batch of the same shape, dtype and device;
* every random number is drawn from ``generator`` (the run's CPU generator, the one that also
  shuffles), one small tensor of per-sample parameters per op and batch, then moved to the
  device. So a seed gives the same augmentations, and since the generator's state is in every
  checkpoint, ``--resume`` continues the exact stream.

Why our own ops rather than torchvision.transforms.v2 or kornia (measured by
``bench/augment_speed.py --ops`` on the 2-core dev machine, 512x1x28x28 uint8 batch; figures in
docs/performance.md): v2's random transforms draw *one* set of parameters per call, so different
parameters per sample need a Python loop over the samples (or v2's functional ops per sample),
which is per-sample Python; kornia's augmentations draw per-sample parameters but from torch's
global RNG (not a given generator), work on float only, and were several times slower on this
CPU for the same work. The ops below are a few lines each: crop = pad + one gather, flip =
``torch.where``, affine = ``affine_grid`` + ``grid_sample``, erasing = a broadcast mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Op = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=g) * (hi - lo) + lo).to(device)


def _fill(x: torch.Tensor, value: float) -> float:
    """A fill value given in [0, 1] pixel units, in the batch's stored units (uint8: x 255)."""
    return round(value * 255) if x.dtype == torch.uint8 else value


def random_crop(*, padding: int = 2) -> Op:
    """Pad every side by ``padding`` with zeros, then cut an H x W window at a random offset per
    sample: a random shift of up to ``padding`` pixels in each direction."""

    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if padding == 0:
            return x
        n, c, h, w = x.shape
        hp, wp = h + 2 * padding, w + 2 * padding
        # zeros + a slice copy, not F.pad: F.pad measured 17 ms on a uint8 512x1x28x28 batch on
        # the loaded 2-core machine (0.2 ms with one thread), this 0.06-0.1 ms either way.
        padded = x.new_zeros(n, c, hp, wp)
        padded[:, :, padding : padding + h, padding : padding + w] = x
        # One draw for both offsets: [n, 2] integers in [0, 2 * padding].
        off = torch.randint(0, 2 * padding + 1, (n, 2), generator=g).to(x.device)
        rows = off[:, :1] + torch.arange(h, device=x.device)  # [n, h]
        cols = off[:, 1:] + torch.arange(w, device=x.device)  # [n, w]
        flat = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        return padded.reshape(n, c, hp * wp).gather(2, flat).view(n, c, h, w)

    return op


def _flip(dim: int, p: float) -> Op:
    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if p == 0:
            return x
        chosen = (torch.rand(x.shape[0], generator=g) < p).to(x.device)
        return torch.where(chosen.view(-1, 1, 1, 1), x.flip(dim), x)

    return op


def horizontal_flip(*, p: float = 0.5) -> Op:
    """Mirror left-right with probability ``p``, per sample."""
    return _flip(-1, p)


def vertical_flip(*, p: float = 0.5) -> Op:
    """Mirror top-bottom with probability ``p``, per sample."""
    return _flip(-2, p)


def random_affine(
    *,
    degrees: float = 0.0,
    translate: Sequence[float] = (0.0, 0.0),
    scale: Sequence[float] = (1.0, 1.0),
    shear: float = 0.0,
) -> Op:
    """Rotate by U(-degrees, degrees), shift by up to ``translate`` x (width, height), zoom by
    U(scale), shear x by U(-shear, shear) degrees, per sample, about the centre; bilinear,
    zeros outside. The parameters mean what torchvision's RandomAffine's mean."""
    tx_max, ty_max = float(translate[0]), float(translate[1])
    s_lo, s_hi = float(scale[0]), float(scale[1])

    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        u = torch.rand(n, 5, generator=g, dtype=torch.float64)
        angle = (u[:, 0] * 2 - 1) * math.radians(degrees)
        shx = (u[:, 1] * 2 - 1) * math.radians(shear)
        # grid_sample works in [-1, 1] coordinates: a shift of t x width is 2t there.
        tx = (u[:, 2] * 2 - 1) * tx_max * 2
        ty = (u[:, 3] * 2 - 1) * ty_max * 2
        zoom = u[:, 4] * (s_hi - s_lo) + s_lo
        # Forward map A = T R Sh Z (linear part L, shift t); grid_sample needs the inverse
        # (output pixel -> input pixel): L^-1 in closed form, shift -L^-1 t.
        # A positive angle turns the image counter-clockwise on screen, as torchvision's: with y
        # pointing down that is the mathematical rotation by -angle.
        cos, sin, tan = torch.cos(angle), -torch.sin(angle), torch.tan(shx)
        a, b = cos * zoom, (cos * tan - sin) * zoom
        c, d = sin * zoom, (sin * tan + cos) * zoom
        h, w = x.shape[-2:]
        if h != w:
            # L is in pixel proportions; [-1, 1] coordinates squeeze x by 2/w and y by 2/h, so
            # the off-diagonal terms are rescaled (D L D^-1, D = diag(2/w, 2/h)).
            b, c = b * (h / w), c * (w / h)
        det = a * d - b * c
        ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
        theta = torch.stack([ia, ib, -(ia * tx + ib * ty), ic, id_, -(ic * tx + id_ * ty)], 1)
        theta = theta.to(torch.float32).to(x.device).view(n, 6, 1, 1)
        # The sampling grid written out rather than F.affine_grid: same values (within 6e-8),
        # 1.5 ms instead of 3.6 ms for 512x28x28 on one core (bench/augment_speed.py --ops).
        gx, gy = _base_grid(h, w, x.device)
        grid = torch.stack(
            [
                theta[:, 0] * gx + theta[:, 1] * gy + theta[:, 2],
                theta[:, 3] * gx + theta[:, 4] * gy + theta[:, 5],
            ],
            -1,
        )
        src = x if x.is_floating_point() else x.float()
        out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if x.dtype == torch.uint8:
            return out.round_().clamp_(0, 255).to(torch.uint8)
        return out.to(x.dtype)

    return op


def _base_grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres in [-1, 1] coordinates (align_corners=False): x as [1, w], y as [h, 1]."""
    gx = (torch.arange(w, device=device, dtype=torch.float32) * 2 + 1) / w - 1
    gy = (torch.arange(h, device=device, dtype=torch.float32) * 2 + 1) / h - 1
    return gx.view(1, w), gy.view(h, 1)


def random_erasing(
    *,
    p: float = 0.5,
    scale: Sequence[float] = (0.02, 0.33),
    ratio: Sequence[float] = (0.3, 3.3),
    value: float = 0.0,
) -> Op:
    """With probability ``p`` per sample, fill one rectangle covering a U(scale) fraction of the
    image, aspect ratio log-uniform in ``ratio``, with ``value`` (in [0, 1] pixel units; audio
    features: the feature value). As torchvision's RandomErasing, except that a rectangle that
    would not fit is clipped to the image instead of re-drawn (no per-sample retry loop)."""
    a_lo, a_hi = float(scale[0]), float(scale[1])
    r_lo, r_hi = math.log(ratio[0]), math.log(ratio[1])

    def op(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if p == 0:
            return x
        n, _, h, w = x.shape
        u = torch.rand(n, 5, generator=g)
        area = (u[:, 0] * (a_hi - a_lo) + a_lo) * (h * w)
        aspect = torch.exp(u[:, 1] * (r_hi - r_lo) + r_lo)
        eh = torch.sqrt(area * aspect).round().clamp(1, h)
        ew = torch.sqrt(area / aspect).round().clamp(1, w)
        top = (u[:, 2] * (h - eh + 1)).floor()
        left = (u[:, 3] * (w - ew + 1)).floor()
        on = u[:, 4] < p
        box = torch.stack([top, top + eh, left, left + ew], 1).to(x.device)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        b = box.view(n, 4, 1, 1)
        mask = (ys >= b[:, 0]) & (ys < b[:, 1]) & (xs >= b[:, 2]) & (xs < b[:, 3])
        mask &= on.to(x.device).view(n, 1, 1)
        return x.masked_fill(mask.unsqueeze(1), _fill(x, value))

    return op


class Augment:
    """The recipe's ``data.augment`` list as one callable: ops applied in order to a raw batch."""

    def __init__(self, ops: Sequence[Op], names: Sequence[str]) -> None:
        self.ops, self.names = list(ops), list(names)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"data.augment works on image-like batches [N, C, H, W]; this data's batches are "
                f"{list(x.shape)}"
            )
        for op in self.ops:
            x = op(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Augment({', '.join(self.names)})"
