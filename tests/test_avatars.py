from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from bot.avatars import AvatarError, normalize_avatar


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), "red").save(out, format="PNG")
    return out.getvalue()


def _bomb_header(width: int, height: int) -> bytes:
    """A PNG that claims enormous dimensions (its pixels are never decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 10)
    body += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return b"\x89PNG\r\n\x1a\n" + body + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def test_large_image_becomes_small_png() -> None:
    out = normalize_avatar(_png(2000, 1000))
    with Image.open(io.BytesIO(out)) as img:
        assert img.format == "PNG" and max(img.size) == 512


def test_jpeg_and_palette_images_are_accepted() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(buf, format="JPEG")
    assert normalize_avatar(buf.getvalue()).startswith(b"\x89PNG")
    assert normalize_avatar(_png(32, 32, "P")).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"not an image at all", "not an image"),
        (_bomb_header(100_000, 100_000), "too large"),
        (b"\x00" * (11 * 1024 * 1024), "limit"),
    ],
)
def test_bad_avatars_get_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(AvatarError, match=message):
        normalize_avatar(data)
