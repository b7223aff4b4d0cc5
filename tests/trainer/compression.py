"""Compressed answer bodies for the loopback servers: a valid answer followed by whitespace up to a decoded size.

JSON allows any amount of whitespace after the value, so before the cap such a body parsed as a valid answer however
large it decoded. Bodies are compressed a megabyte at a time, so a 256 MiB one never exists in memory uncompressed.
``br`` and ``zstd`` bodies need the brotli / zstandard packages (httpx decodes them too when those are installed);
their cases are skipped without them.
"""

from __future__ import annotations

import importlib.util
import zlib
from functools import lru_cache

import pytest

MiB = 1024 * 1024
_CHUNK = b" " * MiB


def _zlib(wbits: int):
    def compress(head: bytes, size: int) -> bytes:
        packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
        return b"".join(_fed(packer.compress, head, size)) + packer.flush()

    return compress


def _fed(feed, head: bytes, size: int):
    yield feed(head)
    left = size - len(head)
    while left > 0:
        yield feed(_CHUNK[:min(left, MiB)])
        left -= MiB


def _gzip_twice(head: bytes, size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    return packer.compress(_zlib(31)(head, size)) + packer.flush()


def _brotli(head: bytes, size: int) -> bytes:
    import brotli

    packer = brotli.Compressor(quality=5)
    return b"".join(_fed(packer.process, head, size)) + packer.finish()


def _zstd(head: bytes, size: int) -> bytes:
    import zstandard

    packer = zstandard.ZstdCompressor(level=3).compressobj()
    return b"".join(_fed(packer.compress, head, size)) + packer.flush()


def _needs(module: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"{module} is not installed (httpx decodes this encoding only with it)")


#: name -> (Content-Encoding header, compress(head, decoded size) -> body)
ENCODINGS = {
    "gzip": ("gzip", _zlib(31)),
    "deflate": ("deflate", _zlib(15)),  # zlib-wrapped, as RFC 9110 says
    "deflate-raw": ("deflate", _zlib(-15)),  # what some servers send instead
    "gzip,gzip": ("gzip, gzip", _gzip_twice),  # a chain multiplies the ratio
    "br": ("br", _brotli),
    "zstd": ("zstd", _zstd),
}
MARKS = {"br": _needs("brotli"), "zstd": _needs("zstandard")}


def encoding_params(names=tuple(ENCODINGS)):
    """``pytest.param`` per encoding, br and zstd skipped where their package is missing."""
    return [pytest.param(name, id=name, marks=MARKS.get(name, ())) for name in names]


@lru_cache(maxsize=32)
def compressed(encoding: str, head: bytes, size: int) -> tuple[str, bytes]:
    """``(Content-Encoding, body)``: ``head`` then spaces up to ``size`` decoded bytes, compressed."""
    header, compress = ENCODINGS[encoding]
    return header, compress(head, size)
