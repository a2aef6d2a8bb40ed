"""PNG chunk streams, read and written directly: the card is text in the file, the pixels never need decoding.

A PNG is an 8-byte signature followed by chunks of ``length (4) | type (4) | data | crc (4)``; cards live in
``tEXt`` chunks (keyword ``chara`` or ``ccv3``, Latin-1 text holding base64). ``zTXt`` and ``iTXt`` are read too,
with decompression capped.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from bot.cards.errors import CardError
from bot.cards.limits import MAX_PNG_CHUNKS, MAX_TEXT_CHUNK_BYTES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")


@dataclass(frozen=True, slots=True)
class Chunk:
    type: bytes
    data: bytes
    crc_ok: bool = True

    def encode(self) -> bytes:
        crc = zlib.crc32(self.type + self.data) & 0xFFFFFFFF
        return struct.pack(">I", len(self.data)) + self.type + self.data + struct.pack(">I", crc)


def is_png(data: bytes) -> bool:
    return data.startswith(PNG_SIGNATURE)


def read_chunks(data: bytes) -> list[Chunk]:
    """All chunks up to IEND. Raises :class:`CardError` for a file that is not a PNG or is cut short."""
    if not is_png(data):
        raise CardError("The file is not a PNG image (its first bytes are not the PNG signature).", "not_png")
    chunks: list[Chunk] = []
    pos = len(PNG_SIGNATURE)
    size = len(data)
    while True:
        if pos + 8 > size:
            raise CardError(
                "The PNG is truncated: it ends before its IEND chunk. Download or export the card again.", "truncated"
            )
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > size:
            raise CardError(
                f"The PNG is truncated: its {kind.decode('latin-1', 'replace')!r} chunk at byte {pos} claims "
                f"{length:,} bytes but the file ends first. Download or export the card again.",
                "truncated",
            )
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        chunks.append(Chunk(kind, body, crc_ok=(zlib.crc32(kind + body) & 0xFFFFFFFF) == crc))
        pos = end
        if kind == b"IEND":
            return chunks
        if len(chunks) > MAX_PNG_CHUNKS:
            raise CardError(f"The PNG has more than {MAX_PNG_CHUNKS} chunks; that is not a normal image.", "bad_png")


def image_size(chunks: list[Chunk]) -> tuple[int, int]:
    """Width and height from the IHDR chunk (which must come first)."""
    if not chunks or chunks[0].type != b"IHDR" or len(chunks[0].data) < 8:
        raise CardError("The PNG has no valid IHDR header chunk; the file is damaged.", "bad_png")
    width, height = struct.unpack_from(">II", chunks[0].data, 0)
    return int(width), int(height)


def _inflate(data: bytes, keyword: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_CHUNK_BYTES + 1)
    except zlib.error:
        raise CardError(f"The PNG's compressed {keyword!r} text chunk is damaged.", "bad_png") from None
    if len(out) > MAX_TEXT_CHUNK_BYTES or inflater.unconsumed_tail:
        raise CardError(
            f"The PNG's {keyword!r} text chunk unpacks to over {MAX_TEXT_CHUNK_BYTES:,} bytes, too much for a card.",
            "too_large",
        )
    return out


def decode_text_chunk(chunk: Chunk) -> tuple[str, str] | None:
    """``(keyword, text)`` of a tEXt/zTXt/iTXt chunk; None for other chunks or unreadable ones."""
    if chunk.type not in TEXT_TYPES:
        return None
    keyword_bytes, sep, rest = chunk.data.partition(b"\0")
    if not sep or not 1 <= len(keyword_bytes) <= 79:
        return None
    keyword = keyword_bytes.decode("latin-1")
    if chunk.type == b"tEXt":
        if len(rest) > MAX_TEXT_CHUNK_BYTES:
            raise CardError(
                f"The PNG's {keyword!r} text chunk is larger than {MAX_TEXT_CHUNK_BYTES:,} bytes, too much for a card.",
                "too_large",
            )
        return keyword, rest.decode("latin-1")
    if chunk.type == b"zTXt":
        if not rest or rest[0] != 0:
            return None
        return keyword, _inflate(rest[1:], keyword).decode("latin-1")
    # iTXt: compression flag, method, language tag \0, translated keyword \0, UTF-8 text.
    if len(rest) < 2:
        return None
    compressed, method = rest[0], rest[1]
    _language, sep1, rest = rest[2:].partition(b"\0")
    _translated, sep2, text = rest.partition(b"\0")
    if not (sep1 and sep2):
        return None
    if compressed:
        if method != 0:
            return None
        text = _inflate(text, keyword)
    elif len(text) > MAX_TEXT_CHUNK_BYTES:
        raise CardError(f"The PNG's {keyword!r} text chunk is too large.", "too_large")
    return keyword, text.decode("utf-8", "replace")


def text_chunk(keyword: str, text: str) -> Chunk:
    """A tEXt chunk (the text must be Latin-1: cards store base64, which is ASCII)."""
    return Chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + text.encode("latin-1"))


def encode_png(chunks: list[Chunk]) -> bytes:
    return PNG_SIGNATURE + b"".join(chunk.encode() for chunk in chunks)


def without_text(chunks: list[Chunk], keywords: set[str]) -> list[Chunk]:
    """The chunks minus text chunks whose keyword is in ``keywords`` (compared case-insensitively)."""
    wanted = {k.lower() for k in keywords}
    kept: list[Chunk] = []
    for chunk in chunks:
        if chunk.type in TEXT_TYPES:
            keyword = chunk.data.partition(b"\0")[0].decode("latin-1", "replace").lower()
            if keyword in wanted:
                continue
        kept.append(chunk)
    return kept


def with_text(chunks: list[Chunk], texts: list[tuple[str, str]]) -> list[Chunk]:
    """The chunks with tEXt chunks added just before IEND (where SillyTavern puts them)."""
    added = [text_chunk(keyword, text) for keyword, text in texts]
    if chunks and chunks[-1].type == b"IEND":
        return [*chunks[:-1], *added, chunks[-1]]
    return [*chunks, *added, Chunk(b"IEND", b"")]
