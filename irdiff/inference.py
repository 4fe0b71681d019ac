"""Inference: load a trained run or a bundled model, restore images of any size with blended tiles.

``irdiff.load(run_dir_or_name) -> Restorer``; ``Restorer.restore(image, ...)`` accepts numpy arrays
(HxW, HxWxC; uint8, uint16 or float in [0, 1]), PIL images, or tensors ((C,H,W) / (B,C,H,W) floats in
[0, 1]) and returns the same type, layout and size (times the model's scale for SR). Only safetensors
and JSON are read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from irdiff.checkpoint import CheckpointError, latest_checkpoint, load_state, load_tensors
from irdiff.config import Config, from_dict
from irdiff.methods.base import Method

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


def pretrained_names() -> list[str]:
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "model.json").is_file())


def resolve_model(name_or_dir: str | Path) -> tuple[Path, Path, dict[str, Any]]:
    """Find (weights file, weights key set, metadata) for a bundled name, a run dir or an export dir."""
    p = Path(name_or_dir)
    if not p.exists() and str(name_or_dir) in pretrained_names():
        p = PRETRAINED_DIR / str(name_or_dir)
    if not p.exists():
        known = ", ".join(pretrained_names()) or "none bundled"
        raise CheckpointError(f"{name_or_dir}: no such run directory or bundled model (bundled: {known})")
    if (p / "model.json").is_file() and (p / "model.safetensors").is_file():
        try:
            meta = json.loads((p / "model.json").read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{p / 'model.json'}: invalid JSON ({e.msg})") from None
        return p / "model.safetensors", p, meta
    ckpt = latest_checkpoint(p)
    if ckpt is None:
        raise CheckpointError(f"{p}: holds neither model.safetensors + model.json nor a checkpoint")
    state = load_state(ckpt)
    return ckpt / "ema.safetensors", p, {"config": state["config"], "step": state["step"],
                                         "metrics": state.get("metrics", {}), "from_checkpoint": True}


class Restorer:
    """A trained method + its inference network, ready to restore images."""

    def __init__(self, method: Method, net: nn.Module, cfg: Config, meta: dict[str, Any], device: str = "cpu"):
        self.method, self.net, self.cfg, self.meta = method, net.eval(), cfg, meta
        self.device = torch.device(device)
        self.net.to(self.device)
        self.scale = cfg.data.train.scale

    # ---- core: a (B, C, H, W) [0, 1] tensor at output size -> restored tensor -------------------
    @torch.no_grad()
    def _restore_tensor(self, lq: torch.Tensor, steps: int | None, sampler: str | None,
                        generator: torch.Generator | None, callback: Callable | None) -> torch.Tensor:
        x = lq.to(self.device) * 2 - 1
        out = self.method.sample(self.net, x, steps=steps, sampler=sampler, generator=generator, callback=callback)
        return ((out.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def restore_tensor(self, img: torch.Tensor, steps: int | None = None, tile: int | None = None,
                       overlap: int = 32, generator: torch.Generator | None = None, sampler: str | None = None,
                       tile_batch: int = 4, progress: bool = False) -> torch.Tensor:
        """(C, H, W) float in [0, 1] -> restored (C, sH, sW); tiles of `tile` px blended over `overlap` px."""
        from irdiff.data.degradations import imresize

        steps = steps if steps is not None else self.cfg.sample.steps
        sampler = sampler or self.cfg.sample.sampler
        if self.scale > 1:
            img = imresize(img, scale=self.scale).clamp(0, 1)
        C, H, W = img.shape
        if tile is None or (H <= tile and W <= tile):
            return self._restore_tensor(img[None], steps, sampler, generator, None)[0].cpu()
        if overlap * 2 >= tile:
            raise ValueError(f"overlap {overlap} must be less than half of tile {tile}")
        tile_h, tile_w = min(tile, H), min(tile, W)
        ys, xs = _starts(H, tile_h, overlap), _starts(W, tile_w, overlap)
        window = _window(tile_h, overlap)[:, None] * _window(tile_w, overlap)[None, :]
        out = torch.zeros(C, H, W)
        weight = torch.zeros(1, H, W)
        boxes = [(y, x) for y in ys for x in xs]
        from tqdm import tqdm

        bar = tqdm(total=len(boxes), disable=not progress, desc="tiles", leave=False)
        for i in range(0, len(boxes), tile_batch):
            chunk = boxes[i : i + tile_batch]
            batch = torch.stack([img[:, y : y + tile_h, x : x + tile_w] for y, x in chunk])
            res = self._restore_tensor(batch, steps, sampler, generator, None).cpu()
            for (y, x), r in zip(chunk, res):
                out[:, y : y + tile_h, x : x + tile_w] += r * window
                weight[:, y : y + tile_h, x : x + tile_w] += window
            bar.update(len(chunk))
        bar.close()
        return out / weight

    def restore(self, image: Any, steps: int | None = None, tile: int | None = None, overlap: int = 32,
                generator: torch.Generator | None = None, progress: bool = True, sampler: str | None = None,
                tile_batch: int = 4) -> Any:
        """Restore a numpy / PIL / tensor image; returns the same type and layout."""
        kw = dict(steps=steps, tile=tile, overlap=overlap, generator=generator, sampler=sampler,
                  tile_batch=tile_batch, progress=progress)
        if torch.is_tensor(image):
            if image.dim() == 4:
                return torch.stack([self.restore_tensor(im.float().cpu(), **kw) for im in image]).to(image)
            if image.dim() == 3:
                return self.restore_tensor(image.float().cpu(), **kw).to(image)
            raise ValueError(f"tensor image must be (C,H,W) or (B,C,H,W), got shape {tuple(image.shape)}")
        from irdiff.data.io import from_numpy

        try:
            from PIL import Image

            is_pil = isinstance(image, Image.Image)
        except ImportError:  # pragma: no cover
            is_pil = False
        arr = np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB")) if is_pil else np.asarray(image)
        alpha = arr[..., 3:] if arr.ndim == 3 and arr.shape[2] == 4 else None
        grey = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 1)
        restored = self.restore_tensor(from_numpy(arr[..., :3] if alpha is not None else arr), **kw)
        res = restored.permute(1, 2, 0).numpy()
        if grey:
            res = res.mean(axis=2, keepdims=arr.ndim == 3)
        res = _like(res, arr.dtype)
        if alpha is not None:
            from irdiff.data.degradations import imresize

            a = alpha
            if self.scale > 1:
                a_t = torch.from_numpy(alpha.astype(np.float32)).permute(2, 0, 1)
                a = imresize(a_t, scale=self.scale).permute(1, 2, 0).numpy().clip(0, np.iinfo(arr.dtype).max
                                                                                  if arr.dtype.kind == "u" else 1)
            res = np.concatenate([res, a.astype(res.dtype)], axis=2)
        if is_pil:
            from PIL import Image

            return Image.fromarray(res)
        return res


def _like(res: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return (res * 255).round().clip(0, 255).astype(np.uint8)
    if dtype == np.uint16:
        return (res * 65535).round().clip(0, 65535).astype(np.uint16)
    return res.astype(dtype if np.issubdtype(dtype, np.floating) else np.float32)


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _window(n: int, overlap: int) -> torch.Tensor:
    """Linear ramps over `overlap` px at both ends, strictly positive so every pixel has weight."""
    i = torch.arange(n, dtype=torch.float32)
    if overlap <= 0:
        return torch.ones(n)
    return torch.minimum(torch.ones(n), torch.minimum((i + 0.5) / overlap, (n - i - 0.5) / overlap))


def load(name_or_dir: str | Path, device: str = "cpu") -> Restorer:
    """Load a bundled model by name (``denoise``, ``sr4``), a training run directory or an export."""
    from irdiff.train import build_method

    weights, _, meta = resolve_model(name_or_dir)
    cfg = from_dict(Config, meta["config"])
    method = build_method(cfg)
    torch.manual_seed(0)
    model = method.build_net(dict(cfg.net), cfg.img_channels)
    net = method.inference_net(model)
    tensors = load_tensors(weights)
    if meta.get("from_checkpoint"):  # EMA state: the model's weights are under "ema_model."
        tensors = {k[len("ema_model."):]: v for k, v in tensors.items() if k.startswith("ema_model.")}
        net = model
    try:
        net.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: weights do not fit the configured net ({str(e).splitlines()[0]})") from None
    if meta.get("from_checkpoint"):
        net = method.inference_net(net)
    return Restorer(method, net, cfg, meta, device=device)
