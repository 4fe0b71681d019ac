import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from irdiff.data.io import (
    ImageReadError,
    from_numpy,
    from_pil,
    list_images,
    read_image,
    to_uint8,
    write_image,
)


def rgb8(h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png8_roundtrip_exact(tmp_path):
    a = rgb8()
    write_image(tmp_path / "a.png", a)
    t = read_image(tmp_path / "a.png")
    assert t.dtype == torch.float32 and t.shape == (3, 6, 5)
    assert np.array_equal(to_uint8(t), a)
    write_image(tmp_path / "b.png", t)  # tensor input
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), a)


@pytest.mark.parametrize("channels", [1, 3])
def test_png16_roundtrip_exact(tmp_path, channels):
    a = np.random.default_rng(1).integers(0, 65536, (7, 9, channels), dtype=np.uint16)
    write_image(tmp_path / "a.png", a, bits=16)
    t = read_image(tmp_path / "a.png")
    expect = torch.from_numpy(a.transpose(2, 0, 1).astype(np.float32) / 65535.0).expand(3, -1, -1)
    assert torch.equal(t, expect)
    # a tensor written at 16 bits comes back within 16-bit rounding
    write_image(tmp_path / "b.png", t, bits=16)
    assert torch.equal(read_image(tmp_path / "b.png"), t)


def _png16_with_filters(a: np.ndarray) -> bytes:
    """Encode uint16 RGB with every PNG filter type (rows cycle 0..4), as libpng/OpenCV may."""
    h, w, c = a.shape
    bpp = 2 * c
    raw = a.astype(">u2").reshape(h, w * c).view(np.uint8).astype(np.int32)
    pad = np.zeros((h + 1, w * bpp + bpp), np.int32)
    pad[1:, bpp:] = raw
    out = []
    for r in range(h):
        x, up = pad[r + 1, bpp:], pad[r, bpp:]
        left, ul = pad[r + 1, :-bpp], pad[r, :-bpp]
        p = left + up - ul
        pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
        ft = r % 5
        pred = [0 * x, left, up, (left + up) // 2, paeth][ft]
        out.append(bytes([ft]) + ((x - pred) & 0xFF).astype(np.uint8).tobytes())

    def chunk(k, b):
        return struct.pack(">I", len(b)) + k + b + struct.pack(">I", zlib.crc32(k + b))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"".join(out))) + chunk(b"IEND", b""))


def test_png16_all_filter_types(tmp_path):
    a = np.random.default_rng(2).integers(0, 65536, (11, 8, 3), dtype=np.uint16)
    (tmp_path / "f.png").write_bytes(_png16_with_filters(a))
    t = read_image(tmp_path / "f.png")
    back = np.round(t.numpy().transpose(1, 2, 0).astype(np.float64) * 65535).astype(np.uint16)
    assert np.array_equal(back, a)


def test_jpeg_tiff_bmp_webp(tmp_path):
    a = np.full((16, 16, 3), 120, np.uint8)
    a[:8] = 30
    for ext, exact in [(".jpg", False), (".jpeg", False), (".tif", True), (".bmp", True), (".webp", False)]:
        p = write_image(tmp_path / f"x{ext}", a, quality=95)
        u = to_uint8(read_image(p))
        assert u.shape == a.shape
        diff = np.abs(u.astype(int) - a).max()
        assert diff == 0 if exact else diff < 12, ext


def test_modes_grey_rgba_palette_cmyk(tmp_path):
    a = rgb8(8, 8)
    Image.fromarray(a[..., 0]).save(tmp_path / "l.png")
    t = read_image(tmp_path / "l.png")
    assert t.shape == (3, 8, 8) and torch.equal(t[0], t[2])
    assert torch.equal(read_image(tmp_path / "l.png", channels=1)[0], t[0])
    rgba = np.concatenate([a, np.full((8, 8, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(to_uint8(read_image(tmp_path / "rgba.png")), a)  # alpha dropped
    Image.fromarray(np.stack([a[..., 0], a[..., 1]], 2), "LA").save(tmp_path / "la.png")
    assert np.array_equal(to_uint8(read_image(tmp_path / "la.png"))[..., 1], a[..., 0])
    pal = Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    assert np.array_equal(to_uint8(read_image(tmp_path / "p.png")), np.asarray(pal.convert("RGB")))
    Image.fromarray(a).convert("CMYK").save(tmp_path / "c.jpg")
    assert read_image(tmp_path / "c.jpg").shape == (3, 8, 8)
    grey = read_image(tmp_path / "rgba.png", channels=1)
    assert grey.shape == (1, 8, 8)


@pytest.mark.parametrize("content,problem", [
    (None, "no such file"),
    (b"", "empty"),
    (b"hello, this is not an image at all", "not an image"),
    ("truncated", "corrupt"),
])
def test_bad_files_raise_naming_file(tmp_path, content, problem):
    p = tmp_path / "bad_file.png"
    if content == "truncated":
        buf = io.BytesIO()
        Image.fromarray(rgb8(32, 32)).save(buf, "PNG")
        content = buf.getvalue()[: len(buf.getvalue()) // 2]
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ImageReadError, match=problem) as e:
        read_image(p)
    assert "bad_file.png" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_truncated_png16_and_jpeg(tmp_path):
    a = np.random.default_rng(3).integers(0, 65536, (16, 16, 3), dtype=np.uint16)
    write_image(tmp_path / "a.png", a, bits=16)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut16.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut16.png"):
        read_image(tmp_path / "cut16.png")
    write_image(tmp_path / "a.jpg", rgb8(32, 32))
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")


def test_too_large(tmp_path, monkeypatch):
    write_image(tmp_path / "a.png", rgb8(16, 16))
    with pytest.raises(ImageReadError, match="too large"):
        read_image(tmp_path / "a.png", max_pixels=100)
    write_image(tmp_path / "b.png", np.zeros((16, 16), np.uint16), bits=16)
    with pytest.raises(ImageReadError, match="too large"):
        read_image(tmp_path / "b.png", max_pixels=100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow's own bomb guard
    with pytest.raises(ImageReadError, match="too large"):
        read_image(tmp_path / "a.png", max_pixels=None)


def test_list_images(tmp_path):
    for name in ["b.png", "a.JPG", "c.tiff", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.tiff"]
    with pytest.raises(ImageReadError, match="missing_dir"):
        list_images(tmp_path / "missing_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image"):
        list_images(tmp_path / "empty")


def test_atomic_write_leaves_no_temp_and_creates_dirs(tmp_path):
    out = tmp_path / "deep" / "er" / "x.png"
    write_image(out, rgb8())
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.png"]
    # a failing encode leaves neither a temp file nor a partial target
    with pytest.raises(ValueError):
        write_image(tmp_path / "deep" / "y.png", np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError):
        write_image(tmp_path / "deep" / "y.jpg", rgb8(), bits=16)
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["er"]
    # overwriting replaces the whole file
    write_image(out, np.zeros((3, 3, 3), np.uint8))
    assert read_image(out).shape == (3, 3, 3)


def test_converters():
    a = rgb8(4, 5)
    t = from_numpy(a)
    assert t.shape == (3, 4, 5) and t.dtype == torch.float32
    assert np.array_equal(to_uint8(t), a)
    assert torch.equal(from_numpy(a[..., 0]), from_numpy(a[..., :1]))
    assert from_numpy(a[..., 0]).shape == (3, 4, 5)
    rgba = np.concatenate([a, a[..., :1]], 2)
    assert torch.equal(from_numpy(rgba), t)
    assert torch.equal(from_numpy(a.astype(np.uint16) * 257), t)
    assert torch.equal(from_numpy(a.astype(np.float32) / 255), t)
    assert torch.equal(from_pil(Image.fromarray(a)), t)
    assert torch.equal(from_pil(Image.fromarray(rgba, "RGBA")), t)
    with pytest.raises(ValueError, match="dtype"):
        from_numpy(a.astype(np.int64))
    # BasicSR rounding: clip, x255, round half to even
    u = to_uint8(torch.tensor([[[-0.2, 0.5, 1.7, 2 / 255 + 1e-4, float("nan")]]]))
    assert u[0, :, 0].tolist() == [0, 128, 255, 2, 0]
