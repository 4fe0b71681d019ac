"""Inference: load a trained run or a bundled model, restore images of any size with blended tiles.

``irdiff.load(run_dir_or_name) -> Restorer``; ``Restorer.restore(image, ...)`` accepts numpy arrays
(HxW, HxWx1/2/3/4; uint8, uint16 or float in [0, 1]), PIL images, or tensors ((C,H,W) / (B,C,H,W),
float in [0, 1] or uint8) and returns the same type, dtype, layout and device, at the model's scale
times the input size (SR models). Only safetensors and JSON are read.

Alpha (the 2nd of 2 or the 4th of 4 channels) is passed through (bicubic-resized for SR). A grey
image is fed to a colour model as three equal channels and the mean of the restored channels is
returned; a colour image is fed to a grey model one channel at a time.

Tiling (``tile=N``; by default, images above 1024² output px use 512-px tiles): the output plane
is cut into tiles of N px whose starts are aligned to the net's down-sampling multiple (so strided
convolutions see the same grid as on the whole image), overlapping by at least ``overlap`` px (as
few tiles as that needs, spread evenly). Each tile's weight is zero over the outer quarter of every
overlap that faces a neighbour (where the tile's zero/reflect padding would show), then ramps
linearly to one; weights are normalised per axis, so they sum to exactly one everywhere. Tiles are
batched through the net and rows are finished strip by strip: memory holds the input, the output
(both in their own dtype) and one strip of float32 accumulators, never a full-size float copy. Nets
that pool over the whole input (NAFNet's channel attention) see per-tile statistics, so their tiled
output differs slightly from the whole.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from irdiff.checkpoint import CheckpointError, latest_checkpoint, load_state, load_tensors
from irdiff.colorfix import COLOR_FIXES
from irdiff.colorfix import color_fix as _color_fix
from irdiff.config import Config, from_dict
from irdiff.ensemble import N_TRANSFORMS, check_ensemble, self_ensemble
from irdiff.methods.base import Method, OptionError, SampleOptions, from_method_range, to_method_range

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
# LR pixels read beyond an SR tile so that per-tile bicubic upsampling equals the whole-image one
# (MATLAB's bicubic reaches 2 input px either side of an output pixel).
_SR_MARGIN = 4
# finished output rows are converted to the output dtype this many at a time (small temporaries)
_WRITE_ROWS = 64
# tile=None: restore images of up to this many output px whole, larger ones in tiles of _AUTO_TILE
_AUTO_WHOLE_PX = 1024 * 1024
_AUTO_TILE = 512

__all__ = ["PRETRAINED_DIR", "Restorer", "as_mask", "check_sampling", "check_tiling", "load", "load_method",
           "pretrained_names", "resolve_model", "tile_grid"]


def pretrained_names() -> list[str]:
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "model.json").is_file())


def resolve_model(name_or_dir: str | Path) -> tuple[Path, Path, dict[str, Any]]:
    """Find (weights file, model folder, metadata) for a bundled name, a run dir or an export dir."""
    p = Path(name_or_dir)
    if not p.exists() and str(name_or_dir) in pretrained_names():
        p = PRETRAINED_DIR / str(name_or_dir)
    if not p.exists():
        known = ", ".join(pretrained_names()) or "none bundled"
        raise CheckpointError(f"{name_or_dir}: no such run directory or bundled model (bundled: {known})")
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a directory (give a run directory or a bundled model name)")
    if (p / "model.json").is_file():
        meta = _read_model_json(p)
        weights = _inside(p, meta.get("weights", "model.safetensors"), "weights")
        if weights.is_file():
            return weights, p, meta
        if latest_checkpoint(p) is None:
            raise CheckpointError(f"{weights}: missing (named by {p / 'model.json'})")
    ckpt = latest_checkpoint(p)
    if ckpt is None:
        raise CheckpointError(f"{p}: holds neither model.safetensors + model.json nor a checkpoint")
    state = load_state(ckpt)
    return ckpt / "ema.safetensors", p, {"config": state["config"], "step": state["step"],
                                         "metrics": state.get("metrics", {}), "from_checkpoint": True}


# model.json's top-level keys: what export_inference, scripts/export_pretrained.py and the official
# importer write. Anything else is refused: a misspelt or foreign key would otherwise be silently ignored.
MODEL_JSON_KEYS = ("config", "step", "metrics", "irdiff", "torch", "name", "task", "train_metrics", "provenance",
                   "source", "weights", "official")  # official: what `irdiff import` read and chose


def _read_model_json(folder: Path) -> dict[str, Any]:
    path = folder / "model.json"
    try:
        meta = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        why = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
        raise CheckpointError(f"{path}: invalid JSON ({why})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path}: has no 'config' mapping")
    unknown = sorted(k for k in meta if k not in MODEL_JSON_KEYS)
    if unknown:
        raise CheckpointError(f"{path}: unknown key {unknown[0]!r} (allowed: {', '.join(MODEL_JSON_KEYS)})")
    return meta


def _inside(folder: Path, name: Any, key: str) -> Path:
    """A file that model.json names: a relative path that stays inside the model folder (no '..', no
    absolute path, no symlink leading out), so a downloaded model cannot make irdiff read elsewhere."""
    where = folder / "model.json"
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{where}: {key} must be a file name, got {name!r}")
    target = (folder / name).resolve()
    if Path(name).is_absolute() or not target.is_relative_to(folder.resolve()):
        raise CheckpointError(f"{where}: {key} {name!r} points outside the model folder {folder}")
    return folder / name


def model_scale(cfg: Config, method: Method | None = None) -> int:
    """Output size / input size: the method's own (Cold's pixelation), else data.train.scale, else the
    scale of a bicubic_down degradation."""
    if method is not None and method.scale > 1:
        return method.scale
    spec = cfg.data.train
    if spec.scale > 1:
        return int(spec.scale)
    deg = spec.degradation or {}
    if deg.get("name") == "bicubic_down":
        return int(deg.get("scale", 4))
    return 1


def check_sampling(method: Method, steps: Any, sampler: str | None, **options: Any) -> SampleOptions:
    """The sampling settings checked against the model before any work: the sampler is one of
    ``method.samplers``, each option (None = not given) one of ``method.Options`` that applies to that
    sampler, steps in 1..``method.max_steps(options)``. Raises OptionError naming the setting."""
    if sampler is not None and sampler not in method.samplers:
        raise OptionError("sampler", f"unknown sampler {sampler!r} for this model (its samplers: "
                          f"{', '.join(method.samplers)})")
    opts = method.sample_options(sampler, **options)
    method.check_steps(steps, opts)
    return opts


def check_tiling(tile: int | None, overlap: int, tile_batch: int | None) -> None:
    """Tiling settings in the user's terms (the net's multiple is applied later, never failing)."""
    if overlap < 0:
        raise OptionError("overlap", f"must be >= 0, got {overlap}")
    if tile is not None and tile != 0 and tile <= 2 * overlap:
        raise OptionError("tile", f"must be 0 (whole image) or > 2 x overlap = {2 * overlap}, got {tile}")
    if tile_batch is not None and tile_batch < 1:
        raise OptionError("tile_batch", f"must be >= 1, got {tile_batch}")


# ---------------------------------------------------------------------------------------- tiling


def _axis_tiles(size: int, tile: int | None, overlap: int, multiple: int) -> list[tuple[int, int]]:
    """(start, end) of the tiles along one axis: as few as give every neighbour pair `overlap` px,
    spread evenly, starts on multiples of `multiple`; the last ends at `size` (up to tile + multiple - 1
    long, so that it needs no padding the whole image would not have had)."""
    if tile is None or size <= tile:
        return [(0, size)]
    last = (size - tile) // multiple * multiple
    if last == 0:
        return [(0, size)]
    n = max(2, math.ceil((size - overlap) / (tile - overlap)))
    while True:
        starts = sorted({k * last // (n - 1) // multiple * multiple for k in range(n - 1)} - {last})
        spans = [(a, a + tile) for a in starts] + [(last, size)]
        if all(b1 - a2 >= overlap for (_, b1), (a2, _) in zip(spans, spans[1:])) or n > size:
            return spans
        n += 1


def _axis_weights(spans: list[tuple[int, int]], size: int, overlap: int) -> list[torch.Tensor]:
    """Per-tile 1-D blending weights, normalised so that they sum to one at every position.

    Across each overlap of `ov` px with a neighbour, a tile's weight is 0 over the outer ov // 4 px
    (where its own border padding shows), then a linear ramp, complementary to the neighbour's.
    """
    total = torch.zeros(size, dtype=torch.float64)
    raw = []
    for k, (a, b) in enumerate(spans):
        w = torch.ones(b - a, dtype=torch.float64)
        i = torch.arange(b - a, dtype=torch.float64)
        if k > 0 and overlap > 0:  # a neighbour before: fade in
            ov = spans[k - 1][1] - a
            m = ov // 4
            w = torch.minimum(w, ((i - m + 0.5) / max(ov - 2 * m, 1)).clamp(0, 1))
        if k < len(spans) - 1 and overlap > 0:  # a neighbour after: fade out
            ov = b - spans[k + 1][0]
            m = ov // 4
            w = torch.minimum(w, ((b - a - 1 - i - m + 0.5) / max(ov - 2 * m, 1)).clamp(0, 1))
        raw.append(w)
        total[a:b] += w
    if bool((total <= 0).any()):  # cannot happen with the spans above; guard the division anyway
        raise ValueError(f"tiling leaves pixels without weight (size {size}, spans {spans})")
    return [(w / total[a:b]).float() for w, (a, b) in zip(raw, spans)]


def tile_grid(height: int, width: int, tile: int | None, overlap: int, multiple: int = 1
              ) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of every tile in raster order (for tests and progress estimates)."""
    return [(y0, y1, x0, x1) for y0, y1 in _axis_tiles(height, tile, overlap, multiple)
            for x0, x1 in _axis_tiles(width, tile, overlap, multiple)]


# --------------------------------------------------------------------------- sources and sinks
# A source reads an input box as float32 (C, h, w) in [0, 1] (floats are not clipped: noisy inputs
# may leave [0, 1]); a sink stores finished output rows given as float32 (C, h, W).


def _np_source(arr: np.ndarray) -> Callable[[int, int, int, int], torch.Tensor]:
    div = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype)

    def read(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        t = arr[y0:y1, x0:x1]
        t = t[..., None] if t.ndim == 2 else t
        x = torch.from_numpy(np.ascontiguousarray(t.transpose(2, 0, 1), dtype=np.float32))
        return x / div if div else x

    return read


def _np_sink(out: np.ndarray) -> Callable[[int, int, torch.Tensor], None]:
    top = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(out.dtype)

    def write(y0: int, y1: int, rows: torch.Tensor) -> None:
        rows = rows.clamp_(0, 1)
        if top:
            rows = rows.mul_(top).round_()
        x = rows.numpy().transpose(1, 2, 0)
        out[y0:y1] = x[..., 0] if out.ndim == 2 else x  # numpy casts to out's dtype

    return write


def _torch_source(img: torch.Tensor) -> Callable[[int, int, int, int], torch.Tensor]:
    def read(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        x = img[:, y0:y1, x0:x1].detach().to("cpu", torch.float32)
        return x / 255.0 if img.dtype == torch.uint8 else x

    return read


def _torch_sink(out: torch.Tensor) -> Callable[[int, int, torch.Tensor], None]:
    def write(y0: int, y1: int, rows: torch.Tensor) -> None:
        rows = rows.clamp_(0, 1)
        if out.dtype == torch.uint8:
            rows = rows.mul_(255).round_()
        out[:, y0:y1] = rows.to(out.device, out.dtype)

    return write


# ----------------------------------------------------------------------------------------- Restorer


class Restorer:
    """A trained method + its inference network, ready to restore images of any size."""

    def __init__(self, method: Method, net: nn.Module, cfg: Config, meta: dict[str, Any], device: str = "cpu"):
        self.method, self.net, self.cfg, self.meta = method, net.eval(), cfg, meta
        self.device = torch.device(device)
        self.net.to(self.device)
        self.scale = model_scale(cfg, method)
        self.channels = cfg.img_channels
        # tiles start on the net's down-sampling grid, and on whole LR pixels for SR
        m = int(getattr(net, "multiple", 1) or 1)
        self.multiple = m * self.scale // math.gcd(m, self.scale)

    def __repr__(self) -> str:
        return (f"Restorer(method={self.cfg.method['name']}, net={self.cfg.net['name']}, scale={self.scale}, "
                f"channels={self.channels}, device={self.device})")

    # ---- public API ----------------------------------------------------------------------------
    def restore(self, image: Any, steps: int | None = None, tile: int | None = None, overlap: int = 32,
                generator: torch.Generator | None = None, progress: bool | Callable[[float], None] = True,
                sampler: str | None = None,
                tile_batch: int | None = None, mask: Any = None, color_fix: str | None = None,
                eta: float | None = None, noise_sigma: float | None = None, ensemble: bool = False) -> Any:
        """Restore a numpy / PIL / tensor image; returns the same type, dtype and layout.

        steps/sampler: the method's sampling settings (default: the run's); steps must lie in
        1..``method.max_steps()`` (never clamped) and one-pass models take none. tile: tile size in output
        px, rounded down to the net's multiple (None: whole image up to 1024² output px, 512-px tiles
        above, the CLI's default too; 0: always whole); overlap: px shared by neighbouring tiles (< tile / 2);
        tile_batch: tiles per forward pass (None: up to 512² px per pass on the CPU, where batching
        gains nothing and costs memory; 1024² on a GPU). generator: the sampling noise (diffusion methods).
        progress: True for a tqdm bar on stderr, or a function called with the fraction done (0..1) after
        every sampler step of every tile batch (a web page's progress bar).
        mask: the pixels to fill, for inpainting models (``needs_mask``): an HxW(xC) numpy / PIL image
        or an (C,)HxW tensor of the image's size; set (> half the dtype's range, any channel) = missing.
        color_fix: "none" | "wavelet" | "adain", colour taken from the input after sampling (default: the
        run's ``sample.color_fix``; see ``irdiff.colorfix``). Not with a mask: it would alter known pixels.
        eta, noise_sigma: the method's sampling options (``method.Options``: SR3, RDDM and IR-SDE's
        posterior sampler take ``eta``; IR-SDE's Denoising-SDE variant and noise-map regression models
        ``noise_sigma``, the input's noise std on the 0-255 scale); None: the model's value (noise-map models:
        estimated from the image); one the model cannot use is an OptionError naming it.
        ensemble: average the restorations of the 8 flips / 90° rotations of each tile (``irdiff.ensemble``;
        8x the time, one-pass models only: an OptionError for a diffusion model).
        """
        options = check_sampling(self.method, steps, sampler or self.cfg.sample.sampler, eta=eta,
                                 noise_sigma=noise_sigma)
        check_tiling(tile, overlap, tile_batch)
        if ensemble:
            check_ensemble(self.method)
        if self.method.needs_mask and mask is None:
            raise ValueError("this model inpaints: pass mask= (the pixels to fill; white = missing)")
        if mask is not None and not self.method.needs_mask:
            raise ValueError(f"this model ({self.cfg.method['name']}) does not take a mask")
        kw = dict(steps=steps, tile=tile, overlap=overlap, generator=generator, progress=progress,
                  sampler=sampler, tile_batch=tile_batch, mask=None if mask is None else as_mask(mask),
                  color_fix=self.cfg.sample.color_fix if color_fix is None else color_fix, ensemble=ensemble)
        if kw["color_fix"] not in COLOR_FIXES:
            raise ValueError(f"unknown color_fix {kw['color_fix']!r}; known: {', '.join(COLOR_FIXES)}")
        if mask is not None and kw["color_fix"] != "none":
            raise ValueError("color_fix cannot be combined with a mask (it would change the known pixels)")
        kw["options"] = {k: v for k, v in dataclasses.asdict(options).items() if v is not None}
        if torch.is_tensor(image):
            return self._restore_torch(image, **kw)
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover
            Image = None
        if Image is not None and isinstance(image, Image.Image):
            return self._restore_pil(image, **kw)
        if isinstance(image, np.ndarray):
            return self._restore_numpy(image, **kw)
        raise TypeError(f"expected a numpy array, PIL image or torch tensor, got {type(image).__name__}")

    def restore_tensor(self, img: torch.Tensor, **kw: Any) -> torch.Tensor:
        """(C, H, W) float in [0, 1] -> restored (C, sH, sW) float32 on the CPU (no progress bar)."""
        kw.setdefault("progress", False)
        return self.restore(img.detach().to("cpu", torch.float32), **kw)

    # ---- front ends ------------------------------------------------------------------------------
    def _restore_numpy(self, arr: np.ndarray, **kw: Any) -> np.ndarray:
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
            raise ValueError(f"expected an HxW or HxWxC array with C in 1..4, got shape {arr.shape}")
        if arr.dtype not in (np.uint8, np.uint16) and not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"unsupported array dtype {arr.dtype} (use uint8, uint16 or float in [0, 1])")
        h, w = arr.shape[:2]
        c = 1 if arr.ndim == 2 else arr.shape[2]
        out = np.empty((h * self.scale, w * self.scale) + arr.shape[2:], dtype=arr.dtype)
        self._run(_np_source(arr), _np_sink(out), h, w, c, **kw)
        return out

    def _restore_torch(self, img: torch.Tensor, **kw: Any) -> torch.Tensor:
        if img.dim() not in (3, 4) or img.shape[-3] not in (1, 2, 3, 4):
            raise ValueError(f"tensor image must be (C,H,W) or (B,C,H,W) with C in 1..4, got {tuple(img.shape)}")
        if not (img.is_floating_point() or img.dtype == torch.uint8):
            raise ValueError(f"unsupported tensor dtype {img.dtype} (use float in [0, 1] or uint8)")
        if img.dim() == 4:
            return torch.stack([self._restore_torch(im, **kw) for im in img]) if len(img) else img.clone()
        c, h, w = img.shape
        out = torch.empty(c, h * self.scale, w * self.scale, dtype=img.dtype, device=img.device)
        self._run(_torch_source(img), _torch_sink(out), h, w, c, **kw)
        return out

    def _restore_pil(self, img: Any, **kw: Any) -> Any:
        from PIL import Image

        mode = img.mode
        if mode in ("L", "LA", "RGB", "RGBA", "F") or mode.startswith("I;16"):
            arr = np.asarray(img)
            arr = arr.astype(np.uint16) if mode.startswith("I;16") else arr
            return Image.fromarray(self._restore_numpy(arr, **kw))  # the array's dtype/shape give the mode
        if mode == "I":
            arr = np.asarray(img)
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise ValueError("PIL mode I image with values outside 0..65535 is not supported")
            res = self._restore_numpy(arr.astype(np.uint16), **kw)
            return Image.fromarray(res.astype(np.int32))
        # palette, 1-bit and other colour spaces: restored as RGB(A) / L; other spaces converted back
        has_alpha = "A" in img.getbands() or "transparency" in img.info
        work = {"1": "L", "P": "RGBA" if has_alpha else "RGB", "PA": "RGBA"}.get(mode, "RGB")
        res = Image.fromarray(self._restore_numpy(np.asarray(img.convert(work)), **kw))
        if mode in ("1", "P", "PA"):
            return res
        try:
            return res.convert(mode)
        except ValueError:
            return res

    # ---- the tiled engine ------------------------------------------------------------------------
    def _run(self, read: Callable, write: Callable, h: int, w: int, c: int, steps: int | None, tile: int | None,
             overlap: int, generator: torch.Generator | None, progress: bool | Callable[[float], None],
             sampler: str | None,
             tile_batch: int | None, mask: torch.Tensor | None = None, color_fix: str = "none",
             options: dict[str, Any] | None = None, ensemble: bool = False) -> None:
        s = self.scale
        if mask is not None and (s != 1 or tuple(mask.shape) != (h, w)):
            raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {w}x{h}"
                             if s == 1 else "masks are for inpainting models (scale 1)")
        colour = 1 if c in (1, 2) else 3  # the rest is alpha, passed through
        H, W = h * s, w * s
        if h == 0 or w == 0:
            raise ValueError(f"empty image ({h}x{w})")
        if tile is None:  # auto: small images whole (exact), large ones tiled (flat memory)
            tile = None if H * W <= _AUTO_WHOLE_PX else _AUTO_TILE
        elif tile == 0:
            tile = None
        if tile is not None:
            if tile < 1:
                raise ValueError(f"tile must be positive, got {tile}")
            m = self.multiple
            # aligned starts need tile - overlap >= m; the blend needs overlap < tile / 2
            tile = max(tile // m * m, -(-(overlap + m) // m) * m, (2 * overlap // m + 1) * m)
            if not 0 <= overlap < tile / 2:
                raise ValueError(f"overlap {overlap} must be in [0, tile/2) for tile {tile}")
        ys, xs = _axis_tiles(H, tile, overlap, self.multiple), _axis_tiles(W, tile, overlap, self.multiple)
        if tile_batch is None:
            budget = 2**20 if self.device.type == "cuda" else 2**18
            tile_batch = max(1, budget // (max(b - a for a, b in ys) * max(b - a for a, b in xs)))
        if tile_batch < 1:
            raise ValueError(f"tile_batch must be positive, got {tile_batch}")
        wy, wx = _axis_weights(ys, H, overlap), _axis_weights(xs, W, overlap)
        boxes = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
        steps = steps if steps is not None else self.cfg.sample.steps
        sampler = sampler or self.cfg.sample.sampler

        from tqdm import tqdm

        quick = len(boxes) == 1 and self.method.num_steps == 1  # one forward pass: no bar
        report = progress if callable(progress) else None
        bar = tqdm(total=len(boxes), disable=report is not None or not progress or quick,
                   desc="tiles" if len(boxes) > 1 else "restore", leave=False, unit="tile")
        acc = torch.zeros(c, 0, W)  # float32 rows [r0, r0 + filled) still receiving tiles
        r0, filled, done_tiles = 0, 0, 0
        try:
            for batch in _batches(boxes, ys, xs, tile_batch):
                tiles = [self._read_tile(read, ys[i], xs[j], h, w) for i, j in batch]

                def callback(i: int, n: int, x: torch.Tensor, k: int = len(batch), before: int = done_tiles) -> None:
                    bar.update(k / max(n, 1))
                    if report is not None:
                        report(min((before + k * (i + 1) / max(n, 1)) / len(boxes), 1.0))

                holes = None if mask is None else torch.stack(
                    [mask[None, ys[i][0]:ys[i][1], xs[j][0]:xs[j][1]] for i, j in batch]).float()
                outs = self._infer(torch.stack(tiles), colour, steps, sampler, generator, callback, holes,
                                   color_fix, options, ensemble)
                del tiles
                done_tiles += len(batch)
                bar.n = done_tiles  # exact count, whatever the per-step updates added up to
                bar.refresh()
                if report is not None:  # also for samplers that skip their steps (IR-SDE below its first level)
                    report(done_tiles / len(boxes))
                filled = max([filled] + [ys[i][1] - r0 for i, _ in batch])
                if filled > acc.shape[1]:  # grow (rarely: the buffer is reused strip after strip)
                    acc = torch.cat([acc, torch.zeros(c, filled - acc.shape[1], W)], dim=1)
                for (i, j), o in zip(batch, outs):
                    (y0, y1), (x0, x1) = ys[i], xs[j]
                    acc[:, y0 - r0 : y1 - r0, x0:x1].addcmul_(o, wy[i][:, None] * wx[j][None, :])
                del outs
                # rows above the next tile's top receive nothing more: finish them, a few at a time
                done = ys[boxes[done_tiles][0]][0] if done_tiles < len(boxes) else H
                if done > r0:
                    for a in range(r0, done, _WRITE_ROWS):
                        b = min(a + _WRITE_ROWS, done)
                        write(a, b, acc[:, a - r0 : b - r0])  # the sink may scribble on these rows
                    keep = filled - (done - r0)
                    if keep > 0:
                        acc[:, :keep] = acc[:, done - r0 : filled].clone()
                    acc[:, max(keep, 0) :].zero_()
                    r0, filled = done, max(keep, 0)
        finally:
            bar.close()

    def _read_tile(self, read: Callable, yspan: tuple[int, int], xspan: tuple[int, int], h: int, w: int
                   ) -> torch.Tensor:
        """Input under an output box, at output size (SR: bicubic-upsampled from an LR crop + margin)."""
        (y0, y1), (x0, x1), s = yspan, xspan, self.scale
        if s == 1:
            return read(y0, y1, x0, x1)
        ly0, ly1 = max(y0 // s - _SR_MARGIN, 0), min(y1 // s + _SR_MARGIN, h)
        lx0, lx1 = max(x0 // s - _SR_MARGIN, 0), min(x1 // s + _SR_MARGIN, w)
        up = self.method.upsample_input(read(ly0, ly1, lx0, lx1), s)
        oy, ox = y0 - ly0 * s, x0 - lx0 * s
        return up[:, oy : oy + y1 - y0, ox : ox + x1 - x0].clamp(0, 1)

    @torch.inference_mode()
    def _infer(self, tiles: torch.Tensor, colour: int, steps: int | None, sampler: str | None,
               generator: torch.Generator | None, callback: Callable, mask: torch.Tensor | None = None,
               color_fix: str = "none", options: dict[str, Any] | None = None, ensemble: bool = False
               ) -> torch.Tensor:
        """(B, C, h, w) input tiles in [0, 1] (+ (B, 1, h, w) mask) -> restored (B, C, h, w) float32, CPU."""
        x, alpha = tiles[:, :colour], tiles[:, colour:]
        b = x.shape[0]
        if colour == self.channels:
            inp = x
        elif colour == 1:
            inp = x.expand(-1, self.channels, -1, -1)
        elif self.channels == 1:
            inp = x.reshape(b * colour, 1, *x.shape[-2:])
        else:
            raise ValueError(f"cannot feed a {colour}-channel image to a {self.channels}-channel model")
        inp = to_method_range(inp.to(self.device))
        holes = None if mask is None else mask.to(self.device).repeat_interleave(inp.shape[0] // b, 0)

        def restore(x: torch.Tensor, holes: torch.Tensor | None, report: Callable = callback) -> torch.Tensor:
            extra = dict(options or {}, **({} if holes is None else {"mask": holes}))
            return self.method.sample(self.net, x, steps=steps, sampler=sampler, generator=generator,
                                      callback=report, **extra)

        if ensemble:
            passes = iter(range(N_TRANSFORMS))

            def one_pass(x: torch.Tensor, holes: torch.Tensor | None) -> torch.Tensor:
                p = next(passes)  # progress: step i of n in pass p is step p * n + i of 8 n
                return restore(x, holes, lambda i, n, y: callback(p * n + i, N_TRANSFORMS * n, y))

            out = self_ensemble(one_pass, inp, holes)
        else:
            out = restore(inp, holes)
        out = _color_fix(color_fix, out, inp)
        out = from_method_range(out.float()).cpu()
        if colour == 1 and self.channels != 1:
            out = out.mean(dim=1, keepdim=True)
        elif self.channels == 1 and colour != 1:
            out = out.reshape(b, colour, *out.shape[-2:])
        return torch.cat([out, alpha.clamp(0, 1)], dim=1) if alpha.shape[1] else out


def as_mask(mask: Any) -> torch.Tensor:
    """A missing-pixel mask as a bool (H, W) tensor. numpy / PIL: HxW or HxWxC; tensor: HxW or CxHxW.

    Set = above half the dtype's range (uint8 > 127, uint16 > 32767, float > 0.5, bool True; other integers:
    > 0 for 0/1 maps, > 127 otherwise), in any colour channel; an alpha channel (C = 2 or 4) is ignored.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(mask, Image.Image):
        if mask.mode in ("P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
            mask = mask.convert("RGBA" if "A" in mask.getbands() or mask.mode == "PA" else "L")
        mask = np.asarray(mask)
        mask = mask.astype(np.uint16) if mask.dtype.byteorder not in ("=", "|") else mask  # I;16B etc.
    if torch.is_tensor(mask):
        mask = mask.detach().cpu()
        if mask.dim() == 3:
            mask = mask.movedim(0, -1)
        mask = mask.numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask: expected a numpy array, PIL image or torch tensor, got {type(mask).__name__}")
    if mask.ndim == 3:
        if mask.shape[2] in (2, 4):
            mask = mask[..., :-1]  # alpha is not a mask channel
        mask = mask.max(axis=2)
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW or have one channel axis, got shape {mask.shape}")
    if mask.dtype == np.bool_:
        out = mask
    elif np.issubdtype(mask.dtype, np.floating):
        out = mask > 0.5
    elif mask.dtype == np.uint8:
        out = mask > 127
    elif mask.dtype == np.uint16:
        out = mask > 32767
    elif np.issubdtype(mask.dtype, np.integer):  # label maps: 0 / 1 or 0 / 255
        out = mask > (127 if mask.size and mask.max() > 1 else 0)
    else:
        raise ValueError(f"unsupported mask dtype {mask.dtype}")
    return torch.from_numpy(np.ascontiguousarray(out))


def _batches(boxes: list[tuple[int, int]], ys: list, xs: list, size: int) -> Iterator[list[tuple[int, int]]]:
    """Consecutive tiles (raster order) of equal shape, at most `size` at a time."""
    batch: list[tuple[int, int]] = []
    shape = None
    for i, j in boxes:
        sh = (ys[i][1] - ys[i][0], xs[j][1] - xs[j][0])
        if batch and (sh != shape or len(batch) == size):
            yield batch
            batch = []
        batch.append((i, j))
        shape = sh
    if batch:
        yield batch


def load_method(name_or_dir: str | Path) -> tuple[Method, Config, dict[str, Any], Path]:
    """(method, config, metadata, weights file) of a model, from its JSON alone: enough to check
    sampling settings before the weights or any image are read."""
    from irdiff.build import build_method

    weights, _, meta = resolve_model(name_or_dir)
    cfg = from_dict(Config, meta["config"])
    return build_method(cfg), cfg, meta, weights


def load(name_or_dir: str | Path, device: str = "cpu") -> Restorer:
    """Load a bundled model by name (``denoise``, ``sr4``), a training run directory or an export.

    Reads only JSON and safetensors. fp16 weights are cast to the net's float32 parameters.
    """
    method, cfg, meta, weights = load_method(name_or_dir)
    # parameter init is overwritten by the weights: fork the global RNG so loading never moves it
    with torch.random.fork_rng(devices=[]):
        model = method.build_net(dict(cfg.net), cfg.img_channels)
    tensors = load_tensors(weights)
    if meta.get("from_checkpoint"):  # EMA state: the model's weights are under "ema_model."
        tensors = {k[len("ema_model."):]: v for k, v in tensors.items() if k.startswith("ema_model.")}
        target = model
    else:
        target = method.inference_net(model)
    try:
        target.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: weights do not fit the configured net ({str(e).splitlines()[0]})") from None
    net = method.inference_net(model) if meta.get("from_checkpoint") else target
    return Restorer(method, net, cfg, meta, device=device)
