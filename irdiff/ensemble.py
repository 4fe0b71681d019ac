"""Test-time self-ensemble ("x8"): restore the 8 flips / 90° rotations of the input and average the
results mapped back (Lim et al. 2017, EDSR+; Timofte et al. 2016).

A restorer trained with random flips and transposes (irdiff's ``augment``) is nearly, not exactly,
equivariant to them; averaging the eight answers cancels part of its error at 8x the cost.

Only for one-pass models: a diffusion sampler's answer is a random draw, so averaging eight draws
(of eight different inputs) is a different estimator (a posterior mean of sorts) whose quality and
cost (8 x steps passes) are not what ``--ensemble`` promises; ``check_ensemble`` refuses it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from irdiff.methods.base import Method, OptionError

N_TRANSFORMS = 8


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` (0..7) of the square's symmetry group on the last two axes: bit 2 transposes,
    then bit 1 flips rows, bit 0 flips columns (k = 0 is the identity)."""
    if k & 4:
        x = x.transpose(-1, -2)
    if k & 2:
        x = x.flip(-2)
    if k & 1:
        x = x.flip(-1)
    return x


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of ``dihedral(., k)``: the same steps in reverse order (each is its own inverse)."""
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    if k & 4:
        x = x.transpose(-1, -2)
    return x


def self_ensemble(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor | None) -> torch.Tensor:
    """Mean over the 8 transforms g of g⁻¹(fn(g(inputs))): every tensor input (e.g. an image batch and its
    mask; None passes through) is transformed alike; fn's output may differ in size (SR). Float32 sum."""
    total = None
    for k in range(N_TRANSFORMS):
        out = fn(*(None if t is None else dihedral(t, k).contiguous() for t in inputs))
        out = dihedral_inverse(out.float(), k)
        total = out.clone() if total is None else total.add_(out)
    return total / N_TRANSFORMS


def check_ensemble(method: Method) -> None:
    """Refuse the self-ensemble for a model that samples in several steps (see the module's note)."""
    steps = method.max_steps()
    if steps is not None:
        raise OptionError("ensemble", f"is for one-pass models; this one ({type(method).__name__}) samples in up "
                          f"to {steps} steps (average several seeds instead)")
