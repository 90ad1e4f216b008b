"""detkit.data.images: robust reading (checked against PIL as the reference decoder) and resizing."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from detkit.boxes import unletterbox_xyxy
from detkit.data import images
from detkit.data.images import letterbox, read_image, read_image_size, resize_darknet, resize_plain
from detkit.errors import ImageError


def _pattern(h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth, asymmetric RGB test picture (JPEG-friendly: no sharp noise)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], axis=2)
    img = img.astype(np.uint8)
    img[: h // 4, : w // 4] = (250, 20, 20)  # a red block marks the top-left corner
    return img


def _save_jpeg(path: Path, img: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95, **kw)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _pil_reference(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def test_non_ascii_path(tmp_path):
    folder = tmp_path / "数据集 ünïcode"
    folder.mkdir()
    p = folder / "图片 一.jpg"
    _save_jpeg(p, _pattern())
    out = read_image(p)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - _pil_reference(p)).max() <= 2
    assert read_image_size(str(p)) == (64, 48)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    p = tmp_path / f"o{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    _save_jpeg(p, _pattern(), exif=exif)
    ref = _pil_reference(p)  # PIL's exif_transpose is the reference
    out = read_image(p)
    assert out.shape == ref.shape
    assert np.abs(out.astype(int) - ref).max() <= 2
    assert read_image_size(p) == (ref.shape[1], ref.shape[0])
    if orientation == 6:  # stored landscape, displayed portrait rotated clockwise
        assert out.shape[:2] == (64, 48)
        assert out[2, -2, 0] > 200 and out[2, -2, 1] < 60  # the red block went to the top-right


def test_apply_orientation_all_cases_exact():
    arr = _pattern(5, 7)
    for o in range(1, 9):
        ref = np.asarray(ImageOps.exif_transpose(_with_orientation(arr, o)))
        assert np.array_equal(images.apply_orientation(arr, o), ref), o


def _with_orientation(arr: np.ndarray, o: int) -> Image.Image:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = o
    Image.fromarray(arr).save(buf, "PNG", exif=exif)
    buf.seek(0)
    im = Image.open(buf)
    im.load()
    return im


def test_greyscale_jpeg(tmp_path):
    p = tmp_path / "grey.jpg"
    grey = _pattern()[..., 1]
    Image.fromarray(grey, mode="L").save(p, quality=95)
    out = read_image(p)
    assert out.shape == (48, 64, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert np.abs(out.astype(int) - _pil_reference(p)).max() <= 2


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(_pattern()).convert("CMYK").save(p, quality=95)
    with Image.open(p) as im:
        assert im.mode == "CMYK"
    out = read_image(p)
    assert out.shape == (48, 64, 3)
    assert np.abs(out.astype(int) - _pil_reference(p)).max() <= 3
    assert np.abs(out.astype(int) - _pattern()).mean() < 3


def test_png_with_alpha_and_16_bit(tmp_path):
    rgb = _pattern()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)  # alpha dropped, colours kept
    grey16 = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), grey16)
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    assert np.abs(out[..., 0].astype(int) - (grey16 >> 8)).max() <= 1


def test_truncated_jpeg_is_reported(tmp_path):
    data = _save_jpeg(tmp_path / "full.jpg", np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8))
    p = tmp_path / "half.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as ei:
        read_image(p)
    assert str(p) in str(ei.value)
    assert read_image_size(p) == (160, 120)  # the header alone is still readable


def test_truncated_progressive_jpeg_is_reported(tmp_path):
    rng = np.random.default_rng(1)
    data = _save_jpeg(tmp_path / "full.jpg", rng.integers(0, 255, (120, 160, 3), np.uint8), progressive=True)
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(ImageError, match="truncated"):
        read_image(p)


def test_jpeg_with_trailer_after_eoi_is_fine(tmp_path):
    data = _save_jpeg(tmp_path / "x.jpg", _pattern())
    p = tmp_path / "trailer.jpg"
    p.write_bytes(data + b"\x00\x00junk\xff\xda more junk")  # SOS-like bytes after EOI
    assert np.abs(read_image(p).astype(int) - read_image(tmp_path / "x.jpg")).max() <= 2


def test_truncated_png_is_reported(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
    p = tmp_path / "cut.png"
    p.write_bytes(buf.getvalue()[:-3000])
    with pytest.raises(ImageError):
        read_image(p)


def test_missing_empty_garbage_and_directory(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="not found"):
        read_image_size(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="empty"):
        read_image_size(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    with pytest.raises(ImageError, match="not a recognised image"):
        read_image(tmp_path / "text.jpg")
    with pytest.raises(ImageError, match="not a recognised image"):
        read_image_size(tmp_path / "text.jpg")
    with pytest.raises(ImageError, match="directory"):
        read_image(tmp_path)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a few bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(12_000, 10_000), (40_000, 40_000)])
def test_decompression_bomb_rejected_from_header(tmp_path, size):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(*size))
    with pytest.raises(ImageError, match="too large|megapixel"):
        read_image(p)


def test_pixel_limit_is_the_module_constant(tmp_path, monkeypatch):
    p = tmp_path / "small.png"
    Image.fromarray(_pattern()).save(p)
    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 48 - 1)
    with pytest.raises(ImageError, match="megapixel"):
        read_image(p)
    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 48)
    assert read_image(p).shape == (48, 64, 3)


def _bright_extent(img: np.ndarray) -> np.ndarray:
    """Continuous xyxy extent of pixels brighter than mid-grey."""
    ys, xs = np.nonzero(img[..., 0] > 128)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


@pytest.mark.parametrize("src_wh,dst_wh", [((300, 200), (416, 416)), ((200, 300), (416, 416)),
                                           ((640, 480), (320, 192)), ((97, 131), (256, 320)),
                                           ((416, 416), (416, 416))])
def test_letterbox_geometry_round_trip(src_wh, dst_wh):
    sw, sh = src_wh
    box = np.array([0.2 * sw, 0.25 * sh, 0.7 * sw, 0.6 * sh]).round()
    img = np.zeros((sh, sw, 3), np.uint8)
    img[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = 255
    out, scale, pad_x, pad_y = letterbox(img, dst_wh, fill=114)
    assert out.shape == (dst_wh[1], dst_wh[0], 3) and out.dtype == np.uint8
    expected = box * scale + np.array([pad_x, pad_y, pad_x, pad_y])
    assert np.abs(_bright_extent(out) - expected).max() <= 1.0
    # padding is the fill value, the content area is not
    assert pad_x == int(pad_x) and pad_y == int(pad_y)
    assert (out[: int(pad_y)] == 114).all() and (out[:, : int(pad_x)] == 114).all()
    new_w, new_h = round(sw * scale), round(sh * scale)
    assert (out[int(pad_y) + new_h:] == 114).all() and (out[:, int(pad_x) + new_w:] == 114).all()
    assert not (out[int(pad_y):int(pad_y) + new_h, int(pad_x):int(pad_x) + new_w] == 114).all()
    # back to source pixels
    back = unletterbox_xyxy(_bright_extent(out), scale, pad_x, pad_y)
    assert np.abs(back - box).max() <= 1.0 / scale + 0.5


def test_letterbox_does_not_modify_input_and_handles_extreme_aspect():
    img = np.full((2, 900, 3), 200, np.uint8)
    before = img.copy()
    out, scale, pad_x, pad_y = letterbox(img, (416, 416))
    assert np.array_equal(img, before)
    assert out.shape == (416, 416, 3) and (out[int(pad_y)] == 200).any()


def test_resize_plain_maps_points_linearly():
    img = np.zeros((200, 300, 3), np.uint8)
    img[50:150, 60:210] = 255
    out = resize_plain(img, (416, 320))
    assert out.shape == (320, 416, 3)
    expected = np.array([60 * 416 / 300, 50 * 320 / 200, 210 * 416 / 300, 150 * 320 / 200])
    assert np.abs(_bright_extent(out) - expected).max() <= 1.0


def test_resize_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB uint8"):
        letterbox(np.zeros((10, 10), np.uint8), (32, 32))
    with pytest.raises(ValueError, match="RGB uint8"):
        resize_plain(np.zeros((10, 10, 3), np.float32), (32, 32))


@pytest.mark.parametrize("src_hw,dst_wh", [((576, 768), (416, 416)), ((30, 50), (64, 96)), ((7, 3), (32, 64))])
def test_resize_darknet_is_corner_aligned_bilinear(src_hw, dst_wh):
    """darknet's resize_image == bilinear with align_corners=True on [0, 1] floats (torch as reference)."""
    import torch
    import torch.nn.functional as F

    img = np.random.default_rng(3).integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    out = resize_darknet(img, dst_wh)
    assert out.shape == (dst_wh[1], dst_wh[0], 3) and out.dtype == np.float32
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    ref = F.interpolate(t, size=(dst_wh[1], dst_wh[0]), mode="bilinear", align_corners=True)[0].permute(1, 2, 0)
    assert np.abs(out - ref.numpy()).max() < 1e-5
    np.testing.assert_allclose(out[-1, -1], img[-1, -1] / 255, atol=1e-6)  # corners map to corners
