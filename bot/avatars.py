"""Persona avatars: any common image in, a small PNG out (what webhooks and card exports use)."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

MAX_AVATAR_BYTES = 10 * 1024 * 1024
MAX_AVATAR_PIXELS = 40_000_000  # refuse decompression bombs before decoding
AVATAR_SIZE = 512


class AvatarError(ValueError):
    """An unusable avatar image; the message says why."""


def normalize_avatar(data: bytes) -> bytes:
    """Decode an image safely and return it as a PNG of at most 512x512 pixels."""
    if not data:
        raise AvatarError("The avatar file is empty.")
    if len(data) > MAX_AVATAR_BYTES:
        raise AvatarError(
            f"The avatar is {len(data) / 1048576:.1f} MiB; the limit is {MAX_AVATAR_BYTES // 1048576} MiB."
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_AVATAR_PIXELS:
                raise AvatarError(f"The avatar is {img.width}x{img.height} pixels, too large to use.")
            img.seek(0)  # first frame of animations
            img.thumbnail((AVATAR_SIZE, AVATAR_SIZE))
            out = io.BytesIO()
            img.convert("RGBA").save(out, format="PNG", optimize=True)
            return out.getvalue()
    except AvatarError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise AvatarError("The avatar has too many pixels, too large to use.") from None
    except UnidentifiedImageError:
        raise AvatarError("The avatar is not an image I can read (use PNG, JPEG, WebP or GIF).") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise AvatarError(f"The avatar image is damaged ({exc}).") from None
