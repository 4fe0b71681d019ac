"""Datasets: paired folders, clean folders + on-the-fly degradation, unpaired folders, procedural images.

Items are dicts of float32 tensors in [0, 1] (the trainer maps them to [-1, 1]): ``gt`` and ``lq``
(same size; for SR the LR is bicubic-upsampled back to the gt size), optionally ``mask``; the
unpaired dataset gives ``real``. Every random choice (crop, flip, noise) comes from a generator
seeded by (seed, epoch, index), so an item is a pure function of its key and runs are reproducible
and resumable without saving loader state.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from irdiff.data.degradations import imresize
from irdiff.data.io import image_size, list_images, read_image
from irdiff.registry import DATASETS, DEGRADATIONS


class DataError(ValueError):
    """Bad data on disk or impossible data settings; the message names the file or key."""


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return g


def _randint(high: int, g: torch.Generator) -> int:
    return int(torch.randint(0, high, (1,), generator=g)) if high > 0 else 0


def augment(tensors: list[torch.Tensor], g: torch.Generator) -> list[torch.Tensor]:
    """The same random flip / transpose (8 dihedral variants) on every tensor of one item."""
    hflip, vflip, transpose = (bool(v) for v in torch.randint(0, 2, (3,), generator=g))
    out = []
    for t in tensors:
        if hflip:
            t = t.flip(-1)
        if vflip:
            t = t.flip(-2)
        if transpose:
            t = t.transpose(-1, -2)
        out.append(t.contiguous())
    return out


class _ImageCache:
    """Decode once; keep 8-bit images as uint8 to quarter the memory."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._store: dict[Path, torch.Tensor] = {}

    def get(self, path: Path) -> torch.Tensor:
        hit = self._store.get(path)
        if hit is not None:
            return hit.float() / 255 if hit.dtype == torch.uint8 else hit
        try:
            img = read_image(path)
        except ValueError as e:  # a truncated body, found only by decoding: one line naming the file
            raise DataError(str(e)) from None
        if self.enabled:
            q = (img * 255).round()
            self._store[path] = q.to(torch.uint8) if torch.equal(q / 255, img) else img
        return img

    def preload(self, paths: list[Path]) -> None:
        """Decode every file now (they are all decoded and kept during the first epoch anyway), so that a
        truncated image stops the run before it starts, not hours later."""
        if self.enabled:
            for p in paths:
                self.get(p)


def _files(folder: str | None, key: str, spec: Any) -> list[Path]:
    if not folder:
        raise DataError(f"{key}: no folder given")
    try:
        files = list_images(folder)
    except ValueError as e:
        from irdiff.data.catalog import fetch_hint

        raise DataError(f"{key}: {e}{fetch_hint(folder)}") from None
    files = files[spec.first_image :]
    files = files[: spec.max_images] if spec.max_images else files
    if not files:
        raise DataError(f"{key}: no images left in {folder} after first_image={spec.first_image}")
    for f in files:  # headers only: empty, non-image, too large or too small files, named before work starts
        try:
            w, h = image_size(f)
        except ValueError as e:
            raise DataError(f"{key}: {e}") from None
        if spec.patch_size and min(w, h) < spec.patch_size:
            raise DataError(f"{f}: image {w}x{h} is smaller than patch_size {spec.patch_size}")
    return files


def _check_patch(img: torch.Tensor, size: int, path: Path) -> None:
    h, w = img.shape[-2:]
    if h < size or w < size:
        raise DataError(f"{path}: image {w}x{h} is smaller than patch_size {size}")


def _crop(img: torch.Tensor, top: int, left: int, size: int) -> torch.Tensor:
    return img[..., top : top + size, left : left + size]


def _modcrop(img: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


class _Base(Dataset):
    def __init__(self, spec: Any, seed: int, train: bool):
        self.spec, self.seed, self.train = spec, seed, train
        self.cache = _ImageCache(spec.cache)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return self.make_item(index, item_generator(self.seed, epoch, index))

    def make_item(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def name_of(self, index: int) -> str:
        return f"{index:05d}"


@DATASETS.register("paired")
class PairedFolders(_Base):
    """gt_dir and lq_dir hold files matched by stem; lq may be 1/scale the size (SR)."""

    def __init__(self, spec: Any, seed: int = 0, train: bool = True):
        super().__init__(spec, seed, train)
        gts = _files(spec.gt_dir, "gt_dir", spec)
        lqs = list_images(spec.lq_dir) if spec.lq_dir else _files(None, "lq_dir", spec)
        by_stem = {p.stem: p for p in lqs}
        missing = [p.name for p in gts if p.stem not in by_stem]
        extra = sorted(set(by_stem) - {p.stem for p in gts})
        if missing or extra:
            what = f"no lq file for {missing[:3]}" if missing else f"no gt file for {extra[:3]}"
            raise DataError(f"paired folders {spec.gt_dir} / {spec.lq_dir} do not match: {what}")
        self.pairs = [(p, by_stem[p.stem]) for p in gts]
        for gt, lq in self.pairs:  # sizes from the headers, before work starts
            (gw, gh), (lw, lh) = image_size(gt), image_size(lq)
            want = (gw // spec.scale, gh // spec.scale)
            if (lw, lh) != want:
                raise DataError(f"{lq}: size {lw}x{lh} does not match gt {gt.name} ({gw}x{gh}"
                                + (f" / {spec.scale})" if spec.scale > 1 else ")"))
        self.cache.preload([f for pair in self.pairs for f in pair])

    def __len__(self) -> int:
        return len(self.pairs)

    def name_of(self, index: int) -> str:
        return self.pairs[index][0].stem

    def make_item(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        gt_path, lq_path = self.pairs[index]
        gt, lq = self.cache.get(gt_path), self.cache.get(lq_path)
        s = self.spec.scale
        if s == 1 and gt.shape != lq.shape:
            raise DataError(f"{lq_path}: size {tuple(lq.shape[1:])} differs from gt {tuple(gt.shape[1:])}")
        if s > 1:
            gt = _modcrop(gt, s)
            if tuple(lq.shape[-2:]) != (gt.shape[-2] // s, gt.shape[-1] // s):
                raise DataError(f"{lq_path}: size {tuple(lq.shape[1:])} is not gt size / {s}")
        if self.spec.patch_size:
            ps, lps = self.spec.patch_size, self.spec.patch_size // s
            _check_patch(lq, lps, lq_path)
            top, left = _randint(lq.shape[-2] - lps + 1, g), _randint(lq.shape[-1] - lps + 1, g)
            lq = _crop(lq, top, left, lps)
            gt = _crop(gt, top * s, left * s, ps)
        if self.train and self.spec.augment:
            gt, lq = augment([gt, lq], g)
        if s > 1:
            lq = imresize(lq, scale=s).clamp(0, 1)
        return {"gt": gt, "lq": lq}


_LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R BT.601, as Pillow's convert("L")


class _CleanSource(_Base):
    """Clean images + an on-the-fly degradation (shared by folder and procedural sources)."""

    def __init__(self, spec: Any, seed: int, train: bool):
        super().__init__(spec, seed, train)
        deg = spec.degradation
        if deg is None:
            raise DataError("degradation: a synthetic dataset needs one (e.g. {name: awgn, sigma: 25})")
        self.degrade = DEGRADATIONS.build(deg["name"], where="degradation",
                                          **{k: v for k, v in deg.items() if k != "name"})

    def clean(self, index: int) -> tuple[torch.Tensor, str]:
        raise NotImplementedError

    def make_item(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        gt, where = self.clean(index)
        s = self.spec.scale
        gt = _modcrop(gt, s)
        if self.spec.patch_size:
            ps = self.spec.patch_size
            _check_patch(gt, ps, where)
            top, left = _randint(gt.shape[-2] - ps + 1, g), _randint(gt.shape[-1] - ps + 1, g)
            gt = _crop(gt, top, left, ps)
        if self.train and self.spec.augment:
            (gt,) = augment([gt], g)
        grey = self.spec.grey_fraction > 0 and float(torch.rand((), generator=g)) < self.spec.grey_fraction
        colours = gt.shape[0]
        if grey and colours == 3:
            gt = torch.einsum("c,chw->hw", _LUMA.to(gt.dtype), gt)[None]
        out = self.degrade(gt, g)
        if grey and colours == 3:  # one grey plane, degraded once, shown to the net as three equal channels
            gt = gt.expand(3, -1, -1).contiguous()
            out = (out[0] if isinstance(out, tuple) else out).expand(3, -1, -1).contiguous(), *(
                out[1:] if isinstance(out, tuple) else ())
            out = out if len(out) > 1 else out[0]
        item = {"gt": gt}
        if isinstance(out, tuple):
            out, item["mask"] = out
        if out.shape[-2:] != gt.shape[-2:]:
            out = imresize(out, out_size=tuple(gt.shape[-2:])).clamp(0, 1)
        item["lq"] = out
        return item


@DATASETS.register("synthetic")
class SyntheticPairs(_CleanSource):
    """A folder of clean images; the degraded input is made on the fly (deterministic per key)."""

    def __init__(self, spec: Any, seed: int = 0, train: bool = True):
        super().__init__(spec, seed, train)
        self.files = _files(spec.gt_dir, "gt_dir", spec)
        self.cache.preload(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def name_of(self, index: int) -> str:
        return self.files[index].stem

    def clean(self, index: int) -> tuple[torch.Tensor, str]:
        return self.cache.get(self.files[index]), self.files[index]


@DATASETS.register("deadleaves")
class DeadLeaves(_CleanSource):
    """Procedural 'dead leaves' images (occluding discs, power-law sizes): a download-free training set.

    Dead-leaves images share natural images' scale invariance and sharp occlusion edges, and
    denoisers trained on them transfer to photos reasonably (Achddou et al., 2021), which makes them
    a fair embedded default for a first run on a fresh machine.
    """

    def __init__(self, spec: Any, seed: int = 0, train: bool = True):
        super().__init__(spec, seed, train)
        self._images: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.spec.num_images

    def clean(self, index: int) -> tuple[torch.Tensor, str]:
        if index not in self._images:
            self._images[index] = dead_leaves(self.spec.image_size, seed=index)
        return self._images[index], f"deadleaves[{index}]"


def dead_leaves(size: int, seed: int, n_discs: int = 3000, r_min: float = 1.5, r_max: float | None = None
                ) -> torch.Tensor:
    """One (3, size, size) dead-leaves image in [0, 1]; radii ~ r^-3 (scale-invariant), drawn front to back.

    Each disc has a random colour with a gentle linear shading; later discs only fill pixels that
    are still empty (front-to-back occlusion), so drawing stops once the canvas is covered.
    """
    rng = np.random.default_rng(seed)
    r_max = r_max or size / 2.5
    img = np.zeros((3, size, size), dtype=np.float32)
    empty = np.ones((size, size), dtype=bool)
    u = rng.random(n_discs)  # inverse-CDF sampling of p(r) ∝ r^-3 on [r_min, r_max]
    radii = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
    centres = rng.random((n_discs, 2)) * size
    colours = rng.random((n_discs, 3)).astype(np.float32) ** 1.5  # darker on average, like photos
    shading = rng.normal(0, 0.2, (n_discs, 2)).astype(np.float32)
    for r, (cy, cx), c, (gy, gx) in zip(radii, centres, colours, shading):
        y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & empty[y0:y1, x0:x1]
        if not inside.any():
            continue
        ramp = 1 + 0.5 * (gy * (yy - cy) + gx * (xx - cx)) / max(r, 1.0)
        for ch in range(3):
            img[ch, y0:y1, x0:x1][inside] = np.clip(c[ch] * ramp[inside], 0, 1)
        empty[y0:y1, x0:x1] &= ~inside
        if not empty.any():
            break
    img[:, empty] = rng.random((3, 1)).astype(np.float32)
    return torch.from_numpy(img)


@DATASETS.register("unpaired")
class UnpairedFolder(_Base):
    """Images without targets (e.g. real degraded photos for Noise-DA): item key ``real``.

    With a ``degradation``, the folder's images are degraded on the fly and their clean versions are
    thrown away: a stand-in "real" domain for benchmarks (a different noise model than training's).
    """

    def __init__(self, spec: Any, seed: int = 0, train: bool = True):
        super().__init__(spec, seed, train)
        self.files = _files(spec.lq_dir or spec.gt_dir, "lq_dir", spec)
        self.cache.preload(self.files)
        deg = spec.degradation
        self.degrade = DEGRADATIONS.build(deg["name"], where="degradation",
                                          **{k: v for k, v in deg.items() if k != "name"}) if deg else None

    def __len__(self) -> int:
        return len(self.files)

    def name_of(self, index: int) -> str:
        return self.files[index].stem

    def make_item(self, index: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        img = self.cache.get(self.files[index])
        if self.spec.patch_size:
            ps = self.spec.patch_size
            _check_patch(img, ps, self.files[index])
            top, left = _randint(img.shape[-2] - ps + 1, g), _randint(img.shape[-1] - ps + 1, g)
            img = _crop(img, top, left, ps)
        if self.train and self.spec.augment:
            (img,) = augment([img], g)
        if self.degrade is not None:
            img = self.degrade(img, g)
            img = img[0] if isinstance(img, tuple) else img
        return {"real": img}


def build_dataset(spec: Any, seed: int, train: bool) -> Dataset:
    ds = DATASETS.get(spec.name)(spec, seed=seed, train=train)
    if len(ds) == 0:
        raise DataError(f"dataset {spec.name}: no images")
    return ds


class BatchPlan:
    """Which items form global batch k: epoch-wise permutations seeded by (seed, epoch).

    A pure function of the step, so resuming at step k reads exactly the batches an uninterrupted
    run would have read. With several processes, each takes its slice of the global batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise DataError(f"train.batch_size {batch_size} is not divisible by {world} processes")
        self.n, self.bs, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def keys(self, step: int) -> list[tuple[int, int]]:
        out = []
        for j in range(step * self.bs, (step + 1) * self.bs):
            epoch, pos = divmod(j, self.n)
            out.append((epoch, int(self._permutation(epoch)[pos])))
        per = self.bs // self.world
        return out[self.rank * per : (self.rank + 1) * per]


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
