"""Read and write images: 8/16-bit PNG, JPEG, TIFF, BMP, WebP, with one-line errors naming the file.

Tensors are float32 (C, H, W) in [0, 1]; arrays are H x W x C. Conventions:

- 16-bit images are divided by 65535 exactly (Pillow reads 16-bit colour PNGs as 8-bit, so 16-bit
  PNGs are decoded here with zlib + numpy instead).
- Alpha is dropped (no compositing), as OpenCV's ``imread(IMREAD_COLOR)`` does; grey is replicated to
  three channels unless ``channels=1``; palette, CMYK and other modes are converted to RGB by Pillow.
- EXIF orientation is applied, as OpenCV's ``imread`` does, so what is restored is what a viewer shows.
- Writes are atomic: encoded in memory, written to a temporary file in the target folder, fsynced and
  renamed over the target, so a crash never leaves a half-written image.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from irdiff.checkpoint import write_bytes_atomic

__all__ = [
    "IMAGE_EXTS",
    "DEFAULT_MAX_PIXELS",
    "ImageReadError",
    "image_size",
    "list_images",
    "read_image",
    "read_array",
    "decode_array",
    "write_image",
    "to_uint8",
    "to_uint16",
    "from_numpy",
    "from_pil",
]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
# Pillow's own default limit (about 89.5 megapixels), fixed here so that other code changing
# Image.MAX_IMAGE_PIXELS does not change what we accept.
DEFAULT_MAX_PIXELS = 89_478_485
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PIL_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".webp": "WEBP",
}
# ITU-R BT.601 luma, the weights Pillow uses for RGB -> L.
_LUMA = (0.299, 0.587, 0.114)


class ImageReadError(ValueError):
    """An image (or a folder of images) could not be read; the message is one line naming it."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"cannot read image {self.path}: {self.problem}")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files (by extension, case-insensitive) directly in `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.exists():
        raise ImageReadError(folder, "no such folder")
    if not folder.is_dir():
        raise ImageReadError(folder, "not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ImageReadError(folder, f"folder holds no image ({', '.join(IMAGE_EXTS)})")
    return files


# ----------------------------------------------------------------------------------------- reading


def read_array(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS, alpha: bool = False
               ) -> np.ndarray:
    """Decode an image file to its own dtype (uint8 / uint16 / float32), H x W x C, without a float copy:
    what tiled restoration reads, at 1 or 2 bytes per sample whatever the size. Same checks and one-line
    ImageReadError messages as :func:`read_image`; None lifts our pixel limit (Pillow's own still applies).
    alpha: keep an alpha channel (C = 2 or 4) instead of dropping it.
    """
    path = Path(path)
    return decode_array(_read_bytes(path), path, max_pixels, alpha)


def decode_array(data: bytes, name: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 alpha: bool = False) -> np.ndarray:
    """:func:`read_array` on bytes already in memory (an upload); `name` only labels the error messages."""
    name = Path(name)
    if not data:
        raise ImageReadError(name, "empty file")
    if data.startswith(_PNG_SIGNATURE) and len(data) > 24 and data[24] == 16:
        return _decode_png16(name, data, max_pixels, alpha)
    return _decode_pil(name, data, max_pixels, alpha)


@contextlib.contextmanager
def _pillow_errors(path: Path) -> Iterator[None]:
    """Pillow's many failure types -> one-line ImageReadErrors naming the file. Our own max_pixels check
    replaces Pillow's decompression-bomb warning; its hard error (2x the limit) still applies."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"image too large (decompression bomb guard: {e})") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(path, "not an image (unrecognised format)") from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError) as e:
        raise ImageReadError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from e


def image_size(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as :func:`read_image` would return it (EXIF orientation applied), from the header
    only: a cheap check of a whole folder before work starts. Missing, empty, non-image and too large
    files raise the same one-line ImageReadError; a truncated body is only found by decoding."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not a file")
    with _pillow_errors(path):
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file")
        with Image.open(path) as img:
            w, h = img.size
            _check_size(path, w, h, max_pixels)
            orientation = img.getexif().get(0x0112, 1)  # 5..8: stored transposed
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not a file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(path, f"{type(e).__name__}: {e.strerror or e}") from e
    if not data:
        raise ImageReadError(path, "empty file")
    return data


def read_image(
    path: str | os.PathLike, channels: int = 3, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """Read an image file as a float32 tensor (channels, H, W) in [0, 1].

    channels: 3 (grey replicated) or 1 (colour converted with BT.601 luma weights).
    max_pixels: images with more pixels raise ImageReadError ("too large"); None disables our check
    (Pillow's own decompression-bomb limit, 2 x Image.MAX_IMAGE_PIXELS, still applies).
    Missing, empty, corrupt, truncated or non-image files raise ImageReadError naming the file.
    """
    if channels not in (1, 3):
        raise ValueError(f"read_image: channels must be 1 or 3, got {channels}")
    return from_numpy(read_array(path, max_pixels), channels=channels)


def _check_size(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(path, f"image too large ({width}x{height} > max_pixels={max_pixels})")


def _decode_pil(path: Path, data: bytes, max_pixels: int | None, alpha: bool = False) -> np.ndarray:
    with _pillow_errors(path), Image.open(io.BytesIO(data)) as img:
        _check_size(path, img.width, img.height, max_pixels)
        img.load()
        img = ImageOps.exif_transpose(img)
        return _pil_to_array(img, alpha)


def _pil_to_array(img: Image.Image, alpha: bool = False) -> np.ndarray:
    """Pillow image -> uint8/uint16/float32 array H x W x C (C = 1 or 3; 2 or 4 with alpha kept)."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(img).astype(np.uint16)[..., None]
    if mode == "I":
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError("32-bit integer image with values outside 0..65535 is not supported")
        return arr.astype(np.uint16)[..., None]
    if mode == "F":
        return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)[..., None]
    if mode == "1":
        img = img.convert("L")
    elif mode in ("LA", "La", "PA"):
        img = img.convert("LA") if mode != "PA" else img.convert("RGBA")
    elif mode == "P":
        # Palettes may carry transparency; going through RGBA avoids Pillow's warning about it.
        img = img.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA", "RGBX", "RGBa"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 2 and not alpha:  # LA
        arr = arr[..., :1]
    elif arr.shape[2] == 4 and (not alpha or img.mode == "RGBX"):  # RGBA / RGBX (X is padding)
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def _decode_png16(path: Path, data: bytes, max_pixels: int | None, alpha: bool = False) -> np.ndarray:
    """Decode a 16-bit PNG (grey, grey+alpha, RGB, RGBA; not interlaced) to uint16 H x W x C."""
    try:
        pos, idat, ihdr = 8, [], None
        while pos + 8 <= len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            ctype = data[pos + 4 : pos + 8]
            body = data[pos + 8 : pos + 8 + length]
            if len(body) != length:
                raise ValueError(f"chunk {ctype!r} truncated")
            if ctype == b"IHDR":
                ihdr = struct.unpack(">IIBBBBB", body)
            elif ctype == b"IDAT":
                idat.append(body)
            elif ctype == b"IEND":
                break
            pos += 12 + length
        if ihdr is None:
            raise ValueError("missing IHDR chunk")
        width, height, depth, color_type, _, _, interlace = ihdr
        _check_size(path, width, height, max_pixels)
        nchan = {0: 1, 2: 3, 4: 2, 6: 4}.get(color_type)
        if nchan is None or depth != 16:
            raise ValueError(f"unsupported 16-bit PNG colour type {color_type}")
        if interlace:
            if color_type == 0:  # Pillow reads interlaced 16-bit grey exactly (mode I;16)
                return _decode_pil(path, data, max_pixels)
            raise ValueError("interlaced 16-bit colour PNG is not supported; save it without interlacing")
        raw = zlib.decompress(b"".join(idat))
        bpp = 2 * nchan
        stride = width * bpp
        if len(raw) < height * (stride + 1):
            raise ValueError("image data truncated")
        rows = np.frombuffer(raw, np.uint8, height * (stride + 1)).reshape(height, stride + 1)
        pixels = _png_unfilter(rows[:, 0], rows[:, 1:].reshape(height, width, bpp))
    except ImageReadError:
        raise
    except (ValueError, struct.error, zlib.error) as e:
        raise ImageReadError(path, f"corrupt or truncated PNG ({type(e).__name__}: {e})") from e
    arr = pixels.reshape(height, width * nchan * 2).view(">u2").reshape(height, width, nchan)
    arr = arr.astype(np.uint16)
    if nchan == 2 and not alpha:
        arr = arr[..., :1]
    elif nchan == 4 and not alpha:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def _png_unfilter(ftype: np.ndarray, filt: np.ndarray) -> np.ndarray:
    """Undo PNG scanline filters. filt: (H, W, bpp) uint8, ftype: (H,) filter type per row.

    Pixel (r, c) depends on (r, c-1), (r-1, c) and (r-1, c-1), so all pixels on an anti-diagonal
    r + c = k are independent: decoding walks H + W - 1 diagonals, each one vectorised.
    """
    if np.any(ftype > 4):
        raise ValueError(f"unknown PNG filter type {int(ftype.max())}")
    h, w, bpp = filt.shape
    out = np.zeros((h + 1, w + 1, bpp), np.int32)  # one row/column of zero padding (top, left)
    f = filt.astype(np.int32)
    ft = ftype.astype(np.int32)
    for k in range(h + w - 1):
        r = np.arange(max(0, k - w + 1), min(h, k + 1))
        c = k - r
        a = out[r + 1, c]  # left
        b = out[r, c + 1]  # up
        cc = out[r, c]  # up-left
        p = a + b - cc
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - cc)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, cc))
        t = ft[r][:, None]
        pred = np.select([t == 1, t == 2, t == 3, t == 4], [a, b, (a + b) >> 1, paeth], 0)
        out[r + 1, c + 1] = (f[r, c] + pred) & 0xFF
    return out[1:, 1:].astype(np.uint8)


# -------------------------------------------------------------------------------------- conversion


def from_numpy(arr: np.ndarray, channels: int = 3) -> torch.Tensor:
    """H x W, H x W x 1, H x W x 3 or H x W x 4 array -> float32 tensor (channels, H, W) in [0, 1].

    uint8 is divided by 255, uint16 by 65535, bool maps to {0, 1}; float arrays are taken as already
    in [0, 1] (not clipped). Alpha is dropped; grey is replicated to 3 channels (channels=3) and
    colour converted with BT.601 luma weights (channels=1).
    """
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an H x W, H x W x 1, H x W x 3 or H x W x 4 array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        x = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.bool_:
        x = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float32)
    else:
        raise ValueError(f"unsupported array dtype {arr.dtype} (use uint8, uint16, bool or float)")
    if x.shape[2] in (2, 4):
        x = x[..., :-1]
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
    if channels == 3:
        return t.expand(3, -1, -1).contiguous() if t.shape[0] == 1 else t
    if channels == 1:
        if t.shape[0] == 1:
            return t
        w = torch.tensor(_LUMA, dtype=torch.float32).view(3, 1, 1)
        return (t * w).sum(0, keepdim=True)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def from_pil(img: Image.Image, channels: int = 3) -> torch.Tensor:
    """Pillow image (any mode) -> float32 tensor (channels, H, W) in [0, 1]; see module notes."""
    return from_numpy(_pil_to_array(img), channels=channels)


def _to_hwc(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3:
        raise ValueError(f"expected a (C, H, W) or (H, W) tensor, got shape {tuple(t.shape)}")
    x = t.to("cpu", torch.float32).numpy().transpose(1, 2, 0)
    return np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0)


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) float tensor in [0, 1] -> H x W x C uint8, as BasicSR's tensor2img: clip, x255, round.

    A (H, W) tensor gives H x W x 1; NaN becomes 0.
    """
    return np.round(_to_hwc(t) * np.float32(255.0)).astype(np.uint8)


def to_uint16(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) float tensor in [0, 1] -> H x W x C uint16 (clip, x65535, round)."""
    return np.round(_to_hwc(t).astype(np.float64) * 65535.0).astype(np.uint16)


# ----------------------------------------------------------------------------------------- writing


def write_image(
    path: str | os.PathLike, image: torch.Tensor | np.ndarray, bits: int = 8, quality: int = 95
) -> Path:
    """Write an image atomically; the format follows the extension (.png, .jpg/.jpeg, .tif, .bmp, .webp).

    image: float tensor (C, H, W) / (H, W) in [0, 1], or an H x W [x C] array (uint8, uint16, or
    float in [0, 1]) with C in {1, 3}, or {2, 4} with alpha (dropped for JPEG and BMP, which have none).
    bits: 8, or 16 (PNG only). quality: JPEG/WebP quality.
    Parent folders are created. Returns the path written.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _PIL_FORMATS:
        exts = ", ".join(IMAGE_EXTS)
        raise ValueError(f"write_image: unsupported extension {ext!r} for {path} (use {exts})")
    if bits not in (8, 16):
        raise ValueError(f"write_image: bits must be 8 or 16, got {bits}")
    if bits == 16 and ext != ".png":
        raise ValueError(f"write_image: 16-bit output needs a .png path, got {path}")
    arr = _as_array(image, bits)
    if arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"write_image: expected 1 to 4 channels, got {arr.shape[2]}")
    if arr.shape[2] in (2, 4) and _PIL_FORMATS[ext] in ("JPEG", "BMP"):
        arr = arr[..., :-1]  # no alpha in these formats
    if bits == 16:
        payload = _encode_png16(arr)
    else:
        img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        buf = io.BytesIO()
        kwargs = {"quality": int(quality)} if _PIL_FORMATS[ext] in ("JPEG", "WEBP") else {}
        img.save(buf, format=_PIL_FORMATS[ext], **kwargs)
        payload = buf.getvalue()
    write_bytes_atomic(path, payload)
    return path


def _as_array(image: torch.Tensor | np.ndarray, bits: int) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return to_uint16(image) if bits == 16 else to_uint8(image)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"write_image: expected an H x W [x C] array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.uint16) * 257 if bits == 16 else arr
    if arr.dtype == np.uint16:
        return arr if bits == 16 else np.round(arr / 257.0).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        return to_uint16(torch.from_numpy(arr.transpose(2, 0, 1).copy())) if bits == 16 else to_uint8(
            torch.from_numpy(arr.transpose(2, 0, 1).copy())
        )
    raise ValueError(f"write_image: unsupported array dtype {arr.dtype}")


def _encode_png16(arr: np.ndarray) -> bytes:
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]  # grey, grey + alpha, RGB, RGBA
    rows = arr.astype(">u2").reshape(h, w * c).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 per row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return _PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
