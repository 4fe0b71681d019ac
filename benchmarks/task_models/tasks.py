"""Test settings and classical baselines of the one-pass task models `deblur`, `jpeg` and `derain` (issue 13).

Shared by ``benchmarks/task_models/run.py`` (the side-by-side table) and ``scripts/export_pretrained.py
--eval deblur|jpeg|derain`` (the bundled models' cards), so that a card's numbers are the benchmark's.
Every image goes through ``irdiff.evaluate`` (one seeding scheme, one scoring rule): image i of a set is
degraded with ``item_generator(EVAL_SEED, 0, i)`` at its own size, the prediction is clamped and rounded
to 8 bits and scored with BasicSR's PSNR / SSIM (RGB unless a cell says Y).

Classical baselines (numpy / scipy only, no extra dependency):

- deblur: Wiener deconvolution (Laplacian regulariser) and Richardson-Lucy, both given the TRUE kernel
  of each test setting: non-blind, so the comparison favours them (the model is blind). Their one
  parameter (Wiener's balance, RL's iteration count) is tuned per setting on a few training images
  (BSDS500-train400, never the test set), i.e. each gets its best shot.
- jpeg: none classical in numpy/scipy; the decoded JPEG itself is the baseline (what a viewer shows).
- derain: a median filter and a grey-scale opening by a horizontal line (rain streaks are thin, bright and
  near vertical), their size tuned on training images the same way. Both are weak: they cannot tell a
  streak from any other thin bright detail and blur texture.

Seconds are process CPU time per image (``time.process_time``; one torch thread), which a core shared
with other jobs does not inflate as much as wall time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

EVAL_SEED = 0  # image i of a set is degraded with item_generator(EVAL_SEED, 0, i), as every irdiff number
TUNE_SET, TUNE_IMAGES, TUNE_CROP, TUNE_SEED = "BSDS500-train400", 4, 256, 1


@dataclass(frozen=True)
class Cell:
    """One row of a task's table: a test set, a fixed degradation and the baselines that apply."""

    label: str  # e.g. "gaussian σ1.6 + noise σ1"
    set: str  # folder under the data root
    degradation: dict[str, Any] | None  # None: a paired set (set/input, set/target)
    baselines: tuple[str, ...] = ()
    blur: dict[str, Any] | None = None  # the blur op of a deblur cell (its true kernel for the baselines)
    y_channel: bool = False
    key: str = ""  # a short name for JSON


def _blur(op: dict[str, Any], sigma: float) -> dict[str, Any]:
    return {"name": "chain", "ops": [op, {"name": "awgn", "sigma": sigma}]}


DEBLUR_SETTINGS = (  # (key, label, blur op, noise sigma on the 0-255 scale)
    ("gauss1.6_n1", "Gaussian σ1.6 + noise σ1", {"name": "gaussian_blur", "sigma": 1.6}, 1),
    ("gauss2.5_n2", "Gaussian σ2.5 + noise σ2", {"name": "gaussian_blur", "sigma": 2.5}, 2),
    ("motion9_30deg_n1", "motion 9 px at 30° + noise σ1", {"name": "motion_blur", "length": 9, "angle": 30}, 1),
    ("motion15_120deg_n2", "motion 15 px at 120° + noise σ2", {"name": "motion_blur", "length": 15, "angle": 120}, 2),
)
JPEG_QUALITIES = {"CBSD68": (10, 20, 30, 40, 60), "Kodak24": (10, 30, 60)}  # Kodak: 3x the pixels, 3 levels

TASKS: dict[str, list[Cell]] = {
    "deblur": [Cell(label, "CBSD68", _blur(op, s), ("wiener", "rl"), op, key=f"CBSD68/{key}")
               for key, label, op, s in DEBLUR_SETTINGS],
    "jpeg": [Cell(f"quality {q}", set_name, {"name": "jpeg", "quality": q}, key=f"{set_name}/q{q}")
             for set_name, qualities in JPEG_QUALITIES.items() for q in qualities],
    "derain": [Cell("synthetic rain (irdiff `rain`, training ranges)", "CBSD68", {"name": "rain"},
                    ("median", "opening"), key="CBSD68/rain"),
               Cell("Rain100L-subset3, 3 published pairs (smoke check), RGB", "Rain100L-subset3", None,
                    ("median", "opening"), key="Rain100L-subset3/rgb"),
               Cell("Rain100L-subset3, 3 published pairs (smoke check), Y", "Rain100L-subset3", None,
                    ("median", "opening"), y_channel=True, key="Rain100L-subset3/y")],
}
TASK_SETS = {task: sorted({c.set for c in cells}) for task, cells in TASKS.items()}
BASELINE_NAMES = {"wiener": "Wiener (true kernel)", "rl": "Richardson–Lucy (true kernel)",
                  "median": "median filter", "opening": "opening, horizontal line"}

NOTES = {
    "deblur": "Wiener (Laplacian regulariser) and Richardson–Lucy are given the TRUE kernel of each setting "
              "(non-blind), and their one parameter is tuned per setting on 4 BSDS500-train400 crops: the "
              "comparison favours them; the model is blind (one net for every blur and noise level).",
    "jpeg": "No classical deblocking filter is included (none in numpy/scipy); the baseline is the decoded "
            "JPEG itself (Pillow, 4:2:0), what any viewer shows.",
    "derain": "The median filter and the opening by a horizontal line are weak baselines (size tuned on 4 "
              "BSDS500-train400 crops with synthetic rain): they remove thin bright structures of every kind "
              "and blur texture. Rain100L-subset3 is 3 of the 100 Rain100L test pairs: a smoke check of whether "
              "the model transfers from irdiff's synthetic rain to the published rain, not a Rain100L number.",
}


# ---- classical methods --------------------------------------------------------------------------------------

def psf2otf(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The real 2-D FFT (``scipy.fft.rfft2``) of an odd-sized kernel zero-padded to ``shape`` with its centre
    moved to (0, 0): the transfer function of circular convolution by it."""
    from scipy import fft

    kh, kw = kernel.shape
    big = np.zeros(shape, dtype=np.float32)
    big[:kh, :kw] = kernel
    return fft.rfft2(np.roll(big, (-(kh // 2), -(kw // 2)), axis=(0, 1)))


LAPLACIAN = np.array([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])


class _Padded:
    """A (C, H, W) image reflect-padded (no edge repeat: the border of irdiff's blurs) by ``pad`` px on the
    top and left and at least ``pad`` on the bottom and right, up to sizes the FFT is fast at; FFT
    wrap-around lands in the padding, which ``crop`` removes. ``pad`` 0: the image as it is (circular).
    float32: twice as fast as float64 and far more precise than the 8-bit output."""

    def __init__(self, img: np.ndarray, kernel: np.ndarray, pad: int | None):
        from scipy import fft

        img = np.asarray(img, dtype=np.float32)
        h, w = img.shape[-2:]
        self.pad = min(4 * max(kernel.shape), min(h, w) - 1) if pad is None else pad
        self.h, self.w = h, w
        if self.pad:
            hh, ww = (fft.next_fast_len(n + 2 * self.pad, real=True) for n in (h, w))
            self.x = np.pad(img, ((0, 0), (self.pad, hh - h - self.pad), (self.pad, ww - w - self.pad)),
                            mode="reflect")
        else:
            self.x = img
        self.shape = self.x.shape[-2:]

    def crop(self, a: np.ndarray) -> np.ndarray:
        return a[:, self.pad : self.pad + self.h, self.pad : self.pad + self.w]


def _filter(a: np.ndarray, otf: np.ndarray) -> np.ndarray:
    from scipy import fft

    return fft.irfft2(fft.rfft2(a) * otf, s=a.shape[-2:])


def wiener(img: np.ndarray, kernel: np.ndarray, balance: float, pad: int | None = None) -> np.ndarray:
    """Wiener (Tikhonov) deconvolution of a (C, H, W) image: X = conj(K) Y / (|K|^2 + balance |L|^2), L the
    discrete Laplacian, per channel, on the image reflect-padded by ``pad`` px (default 4 kernel widths)."""
    p = _Padded(img, kernel, pad)
    k, lap = psf2otf(kernel, p.shape), psf2otf(LAPLACIAN, p.shape)
    return p.crop(_filter(p.x, np.conj(k) / (np.abs(k) ** 2 + balance * np.abs(lap) ** 2)))


def richardson_lucy(img: np.ndarray, kernel: np.ndarray, iterations: int, pad: int | None = None,
                    start: float | None = None, each: Callable[[int, np.ndarray], None] | None = None
                    ) -> np.ndarray:
    """Richardson-Lucy deconvolution of a (C, H, W) image: x <- x * K^T (y / (K x)), per channel, circular
    convolutions on the reflect-padded image; starts from the image (or the constant ``start``).
    ``each(i, x)`` sees the cropped estimate after iteration i (to pick an iteration count in one pass)."""
    p = _Padded(np.clip(img, 0, None), kernel, pad)  # RL assumes non-negative data (noise can dip below 0)
    k = psf2otf(kernel, p.shape)
    y = p.x
    k_flipped = np.conj(k)  # correlation: the flipped kernel
    x = y.copy() if start is None else np.full_like(y, start)
    for i in range(iterations):
        x = x * _filter(y / (_filter(x, k) + 1e-12), k_flipped)
        if each is not None:
            each(i + 1, p.crop(x))
    return p.crop(x)


def median(img: np.ndarray, size: int) -> np.ndarray:
    """A size x size median per channel (reflect border)."""
    from scipy.ndimage import median_filter

    return np.stack([median_filter(c, size=size, mode="reflect") for c in img])


def opening(img: np.ndarray, width: int) -> np.ndarray:
    """Grey-scale opening by a horizontal line of ``width`` px per channel: removes bright structures
    narrower than it (near-vertical streaks), keeps wider ones."""
    from scipy.ndimage import grey_opening

    return np.stack([grey_opening(c, size=(1, width), mode="reflect") for c in img])


def true_kernel(blur_op: dict[str, Any], size: int = 65) -> np.ndarray:
    """The kernel a blur op applies, read off its response to a centred impulse (exact for any blur op)."""
    from irdiff.data.degradations import build_degradation

    impulse = torch.zeros(1, 1, size, size, dtype=torch.float64)
    impulse[0, 0, size // 2, size // 2] = 1.0
    k = build_degradation(blur_op)(impulse, None)[0, 0].numpy()
    ys, xs = np.nonzero(np.abs(k) > 1e-9)
    r = int(max(np.abs(ys - size // 2).max(), np.abs(xs - size // 2).max()))  # crop to the support, centred
    k = k[size // 2 - r : size // 2 + r + 1, size // 2 - r : size // 2 + r + 1]
    return k / k.sum()


# ---- the baselines' one parameter, tuned on training images --------------------------------------------------

TUNE_GRIDS = {
    "wiener": [float(v) for v in np.logspace(-5, -1, 17)],  # balance
    "rl": list(range(1, 101)),  # iterations (one run to 100 scores every count)
    "median": [3, 5, 7],
    "opening": [3, 5, 7, 9],
}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _apply(name: str, lq: np.ndarray, param: Any, kernel: np.ndarray | None) -> np.ndarray:
    if name == "wiener":
        return wiener(lq, kernel, param)
    if name == "rl":
        return richardson_lucy(lq, kernel, param)
    if name == "median":
        return median(lq, param)
    if name == "opening":
        return opening(lq, param)
    raise ValueError(f"unknown baseline {name!r}")


def tune(cell: Cell, name: str, data: Path) -> tuple[Any, float]:
    """(parameter, mean PSNR) of baseline ``name`` with the best mean RGB PSNR over the first TUNE_IMAGES
    training images (centre crop TUNE_CROP) degraded as the cell (a paired cell: as the `rain` op)."""
    from irdiff.evaluate import degraded_items, score

    degradation = cell.degradation or {"name": "rain"}
    items = degraded_items(data / TUNE_SET, degradation, TUNE_SEED, max_images=TUNE_IMAGES, center_crop=TUNE_CROP)
    kernel = true_kernel(cell.blur) if cell.blur else None
    grid = TUNE_GRIDS[name]
    totals = {p: 0.0 for p in grid}
    for item in items:
        lq = _np(item.lq)
        if name == "rl":  # one run, scored after every iteration
            def each(i: int, x: np.ndarray, gt: torch.Tensor = item.gt) -> None:
                totals[i] += score(torch.from_numpy(x), gt)[0]

            richardson_lucy(lq, kernel, max(grid), each=each)
        else:
            for p in grid:
                totals[p] += score(torch.from_numpy(_apply(name, lq, p, kernel)), item.gt)[0]
    best = max(grid, key=lambda p: totals[p])
    return best, totals[best] / len(items)


# ---- evaluation -----------------------------------------------------------------------------------------------

@dataclass
class CpuTimer:
    """Wraps a restore function and records the process CPU seconds of each call."""

    restore: Callable[..., torch.Tensor]
    seconds: list[float] = field(default_factory=list)

    def __call__(self, item: Any, generator: torch.Generator) -> torch.Tensor:
        t0 = time.process_time()
        out = self.restore(item, generator)
        self.seconds.append(time.process_time() - t0)
        return out


def cell_items(cell: Cell, data: Path, max_images: int | None = None, every: int = 1) -> list[Any]:
    """The cell's test items: a clean set degraded with the per-image seeds (``every``-th file, then the first
    ``max_images``; an image keeps its seed whichever are taken), or a paired set (all its pairs)."""
    from irdiff.config import DataSpec
    from irdiff.evaluate import dataset_items, degraded_items

    if cell.degradation is not None:
        return degraded_items(data / cell.set, cell.degradation, EVAL_SEED, every=every, max_images=max_images)
    spec = DataSpec(name="paired", gt_dir=str(data / cell.set / "target"), lq_dir=str(data / cell.set / "input"),
                    patch_size=None, cache=False)
    return dataset_items(spec, EVAL_SEED, max_images=max_images)


def missing_sets(task: str, data: Path, baselines: bool = True) -> list[str]:
    need = list(TASK_SETS[task]) + ([TUNE_SET] if baselines and any(c.baselines for c in TASKS[task]) else [])
    return [s for s in need if not (data / s).is_dir()]


def evaluate_task(task: str, restorer: Any, data: Path, max_images: int | None = None, tile: int | None = None,
                  baselines: bool = True, log: Callable[[str], None] | None = None, every: int = 1
                  ) -> dict[str, Any]:
    """Per cell: the model's PSNR / SSIM and CPU seconds per image, the input's, and (``baselines``) each
    classical baseline's with its tuned parameter. Keys are flat (``psnr`` is the model's only)."""
    from irdiff.evaluate import evaluate, with_restorer

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    tuned: dict[tuple, tuple[Any, float]] = {}
    for cell in TASKS[task]:
        items = cell_items(cell, data, max_images, every)
        timer = CpuTimer(with_restorer(restorer, tile=tile))
        r = evaluate(items, timer, seed=EVAL_SEED, y_channel=cell.y_channel)
        row: dict[str, Any] = {"label": cell.label, "set": cell.set, "degradation": cell.degradation,
                               "y_channel": cell.y_channel, "images": len(items),
                               "psnr": r.mean("psnr"), "ssim": r.mean("ssim"),
                               "cpu_seconds": float(np.mean(timer.seconds)),
                               "input_psnr": r.mean("psnr_in"), "input_ssim": r.mean("ssim_in")}
        for name in cell.baselines if baselines else ():
            tune_key = (name, repr(cell.degradation or {"name": "rain"}))  # a paired cell tunes on `rain`
            if tune_key not in tuned:
                tuned[tune_key] = tune(cell, name, data)
            param = tuned[tune_key][0]
            kernel = true_kernel(cell.blur) if cell.blur else None
            bt = CpuTimer(lambda item, g, n=name, p=param, k=kernel: torch.from_numpy(_apply(n, _np(item.lq), p, k)))
            b = evaluate(items, bt, seed=EVAL_SEED, y_channel=cell.y_channel)
            row.update({f"{name}_psnr": b.mean("psnr"), f"{name}_ssim": b.mean("ssim"), f"{name}_param": param,
                        f"{name}_cpu_seconds": float(np.mean(bt.seconds))})
        out[cell.key] = row
        if log is not None:
            extra = "".join(f", {n} {row[f'{n}_psnr']:.2f}" for n in cell.baselines if f"{n}_psnr" in row)
            log(f"{task} {cell.key}: model {row['psnr']:.2f} dB, input {row['input_psnr']:.2f}{extra} "
                f"({len(items)} images, {row['cpu_seconds']:.2f} CPU s/image)")
    return out


def baseline_param_text(name: str, param: Any) -> str:
    return {"wiener": f"balance {param:.2g}", "rl": f"{param} iterations" + (" (the most tried)" if param ==
            max(TUNE_GRIDS["rl"]) else ""), "median": f"{param}x{param}",
            "opening": f"1x{param}"}.get(name, str(param))


def table(task: str, metrics: dict[str, Any]) -> list[str]:
    """A markdown table of one task's cells: model, input and baselines, PSNR / SSIM and CPU s/image."""
    names = [n for n in BASELINE_NAMES if any(f"{n}_psnr" in row for row in metrics.values())]
    head = ["set", "test degradation", "images", "model", "input"] + [BASELINE_NAMES[n] for n in names]
    lines = ["| " + " | ".join(head) + " | model s/img |", "|---" * (len(head) + 1) + "|"]
    for row in metrics.values():
        best = max([row["psnr"], row["input_psnr"]] + [row[f"{n}_psnr"] for n in names if f"{n}_psnr" in row])

        def psnr(v: float, best: float = best) -> str:  # the row's best PSNR in bold
            return f"**{v:.2f}**" if v == best else f"{v:.2f}"

        cells = [row["set"], row["label"], str(row["images"]), f"{psnr(row['psnr'])} / {row['ssim']:.4f}",
                 f"{psnr(row['input_psnr'])} / {row['input_ssim']:.4f}"]
        for n in names:
            if f"{n}_psnr" in row:
                cells.append(f"{psnr(row[f'{n}_psnr'])} / {row[f'{n}_ssim']:.4f} "
                             f"({baseline_param_text(n, row[f'{n}_param'])}, {row[f'{n}_cpu_seconds']:.2f} s)")
            else:
                cells.append("–")
        lines.append("| " + " | ".join(cells) + f" | {row['cpu_seconds']:.2f} |")
    return lines


def mean_gain(metrics: dict[str, Any]) -> float:
    """The model's mean PSNR gain over its input across a task's cells."""
    return float(np.mean([r["psnr"] - r["input_psnr"] for r in metrics.values() if math.isfinite(r["input_psnr"])]))


# ---- reuse: a card takes the benchmark's numbers when they were measured on the same weights and settings ----

def weights_key(restorer: Any) -> str:
    """A hash of the inference net's weights as loaded (float32): a run's checkpoint and the model exported
    from it share it."""
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(restorer.net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def settings_key(task: str) -> str:
    """A hash of a task's test cells and the baselines' tuning: results measured under other settings differ."""
    import hashlib

    text = repr((TASKS[task], TUNE_SET, TUNE_IMAGES, TUNE_CROP, TUNE_SEED, TUNE_GRIDS, EVAL_SEED))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stored_metrics(results_json: Path, task: str, restorer: Any, max_images: int | None) -> dict[str, Any] | None:
    """The task's entry of a benchmark results.json if it was measured on these weights, with these settings
    and image count (and its baselines); else None."""
    import json

    if not results_json.is_file():
        return None
    entry = json.loads(results_json.read_text()).get(task)
    if not entry or entry.get("max_images") != max_images or entry.get("settings") != settings_key(task):
        return None
    if entry.get("model_sha") != weights_key(restorer):
        return None
    return entry
