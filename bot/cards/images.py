"""Avatar images: checked by their headers before anything is decoded, scaled down when too large.

Pillow decodes lazily: ``Image.open`` reads only the header, so the size can be checked before ``load()``
allocates pixels; :data:`~bot.cards.limits.MAX_IMAGE_PIXELS` keeps decompression bombs out.
"""

from __future__ import annotations

import hashlib
import io
import warnings

from PIL import Image, ImageDraw, UnidentifiedImageError

from bot.cards.errors import CardError
from bot.cards.limits import MAX_AVATAR_BYTES, MAX_AVATAR_SIDE, MAX_IMAGE_PIXELS

MIME_BY_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
PLACEHOLDER_SIZE = (400, 600)


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        problem = type(exc).__name__
        raise CardError(f"The image cannot be read ({problem}); use a PNG, JPEG or WebP.", "bad_image") from None
    except Image.DecompressionBombError:
        raise CardError("The image is too large to decode safely.", "too_large") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise CardError(
            f"The image is {width}×{height} pixels; at most {MAX_IMAGE_PIXELS // 1_000_000} megapixels are accepted.",
            "too_large",
        )
    return image


def image_info(data: bytes) -> tuple[str, int, int]:
    """``(mime, width, height)`` from the image header, without decoding pixels."""
    image = _open(data)
    mime = MIME_BY_FORMAT.get(image.format or "")
    if mime is None:
        what = image.format or "this"
        raise CardError(f"Images in {what} format are not supported; use PNG, JPEG or WebP.", "bad_image")
    return mime, image.size[0], image.size[1]


def to_png(data: bytes, *, max_side: int = MAX_AVATAR_SIDE) -> bytes:
    """The image as a PNG no larger than ``max_side`` on either side (decoded only after the size check)."""
    image = _open(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale directly
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise CardError(f"The image is damaged and cannot be decoded ({type(exc).__name__}).", "bad_image") from None
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    image.thumbnail((max_side, max_side))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def avatar_from(data: bytes) -> tuple[bytes, str]:
    """``(bytes, mime)`` to store as a persona avatar: the original when it is small enough, else a PNG thumbnail."""
    mime, width, height = image_info(data)
    if len(data) <= MAX_AVATAR_BYTES and max(width, height) <= MAX_AVATAR_SIDE:
        return data, mime
    return to_png(data), "image/png"


def placeholder_png(name: str) -> bytes:
    """A plain portrait-shaped PNG in a colour derived from ``name``, with its initial, for cards without an avatar."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    background = (64 + digest[0] % 128, 64 + digest[1] % 128, 64 + digest[2] % 128)
    image = Image.new("RGB", PLACEHOLDER_SIZE, background)
    draw = ImageDraw.Draw(image)
    initial = (name.strip()[:1] or "?").upper()
    try:
        from PIL import ImageFont

        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=200)
    except (OSError, TypeError):  # pragma: no cover - Pillow builds without FreeType
        font = ImageFont.load_default()
    draw.text((PLACEHOLDER_SIZE[0] / 2, PLACEHOLDER_SIZE[1] / 2), initial, fill=(255, 255, 255), font=font, anchor="mm")
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
