"""Prediction targets of a Gaussian diffusion net: ε, x0 or v, and the min-SNR-γ loss weight.

Every Gaussian forward marginal in irdiff can be written, in the coordinates the net sees, as

    x_t = α x0 + σ ε,    ε ~ N(0, I)

(SR3: α = √γ, σ = √(1−γ); IR-SDE: x_t − μ = e^{−θ̄_t}(x0 − μ) + √v_t ε, so x0 there is the residual
x0 − μ; its Denoising-SDE variant: α = 1, σ = √v_t). A net may be trained to output

* ``eps``: ε (DDPM; the default, what every existing config and number uses),
* ``x0``:  the clean component x0 itself,
* ``v``:   v = (α ε − σ x0) / r with r = √(α² + σ²) (Salimans & Ho 2022, eq. 9: v = α ε − σ x0
  when α² + σ² = 1, which holds for SR3; the 1/r makes it the same v of the variance-preserving
  process x_t / r in any other parametrisation, so its scale stays O(1)).

``split`` turns whatever the net outputs back into (ε̂, x̂0), which is all a sampler needs; ``target``
is what the loss compares the output to. With SNR = α²/σ², an error δ in x̂0 at fixed x_t is an error
√SNR·δ in ε̂ and √(SNR+1)·δ in v̂, so the min-SNR-γ weights (Hang et al. 2023) that turn each loss into
min(SNR, γ)·‖x̂0 − x0‖² are min(SNR, γ)/SNR (ε), min(SNR, γ) (x0) and min(SNR, γ)/(SNR + 1) (v).

α and σ are floats or tensors broadcastable against the images (the callers build them in float64 and
cast once); nothing here knows about a particular method.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

PREDICTIONS = ("eps", "x0", "v")


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    return prediction


def _r(alpha: Any, sigma: Any) -> Any:
    return (alpha**2 + sigma**2) ** 0.5


def target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha: Any, sigma: Any) -> torch.Tensor:
    """What a net predicting ``prediction`` should output for x_t = α x0 + σ ε."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return (alpha * eps - sigma * x0) / _r(alpha, sigma)
    raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")


def split(prediction: str, out: torch.Tensor, x_t: torch.Tensor, alpha: Any, sigma: Any
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε̂, x̂0) from the net output ``out`` at state x_t = α x0 + σ ε (α > 0 for ε, σ > 0 for x0)."""
    if prediction == "eps":
        return out, (x_t - sigma * out) / alpha
    if prediction == "x0":
        return (x_t - alpha * out) / sigma, out
    if prediction == "v":
        # invert [x_t; r v] = [[α, σ], [−σ, α]] [x0; ε]: the matrix is r × a rotation
        r = _r(alpha, sigma)
        r2 = alpha**2 + sigma**2
        return (sigma * x_t + alpha * r * out) / r2, (alpha * x_t - sigma * r * out) / r2
    raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")


def min_snr_weight(prediction: str, snr: Any, gamma: float) -> Any:
    """Hang et al. 2023's per-sample loss weight: min(SNR, γ) over the target's own SNR factor."""
    if gamma <= 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {gamma}")
    clipped = snr.clamp(max=gamma) if isinstance(snr, torch.Tensor) else np.minimum(snr, gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    if prediction == "v":
        return clipped / (snr + 1)
    raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")


def log_snr(alpha: Any, sigma: Any) -> Any:
    """log(α²/σ²), in float64 when given floats."""
    if isinstance(alpha, torch.Tensor) or isinstance(sigma, torch.Tensor):
        return 2 * (torch.as_tensor(alpha).log() - torch.as_tensor(sigma).log())
    return 2 * (math.log(alpha) - math.log(sigma))
