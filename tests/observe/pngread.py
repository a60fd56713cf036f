"""A small PNG reader for the browser screenshots (8-bit RGB/RGBA, not interlaced): enough to
check what colours a page shows without an imaging library."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def read_png(path: Path) -> np.ndarray:
    """The image as an ``(height, width, 3)`` uint8 RGB array."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        elif kind == b"IEND":
            break
    assert header is not None, "no IHDR"
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    channels = 4 if colour == 6 else 3
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    stride = width * channels
    rows = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.int32)
    previous = np.zeros(stride, dtype=np.int32)
    for r in range(height):
        kind, line = rows[r, 0], rows[r, 1:].astype(np.int32)
        if kind == 0:
            current = line
        elif kind == 2:
            current = (line + previous) & 0xFF
        else:  # Sub, Average, Paeth depend on the pixel to the left: one pixel at a time
            current = np.zeros(stride, dtype=np.int32)
            for i in range(stride):
                a = current[i - channels] if i >= channels else 0
                b = previous[i]
                c = previous[i - channels] if i >= channels else 0
                if kind == 1:
                    predictor = a
                elif kind == 3:
                    predictor = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                current[i] = (line[i] + predictor) & 0xFF
        out[r] = current
        previous = current
    return out.reshape(height, width, channels)[:, :, :3].astype(np.uint8)


def colour_pixels(image: np.ndarray, hex_colour: str, tolerance: int = 24) -> int:
    """How many pixels are within ``tolerance`` (per channel) of ``#rrggbb``."""
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int32)
    close = np.abs(image.astype(np.int32) - target).max(axis=2) <= tolerance
    return int(close.sum())
