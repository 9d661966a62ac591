"""Stream words for the Verilator benches, packed and unpacked with NumPy (verilator_sim).

FINN's npy_to_rtlsim_input / rtlsim_output_to_npy go through a hex string per word, which took
most of a `verify --sim` Verilator run (minutes for ResNetE's 72 RTL nodes; the benches themselves
take seconds). These give the same words for integer datatypes, FINN's layout: the innermost
dimension packed with element 0 in the least significant bits, two's complement at the datatype's
width (tests/test_verilator.py compares both on random data). Other datatypes go to FINN's.
"""

from __future__ import annotations

import numpy as np


def _plain_int(dt) -> bool:
    return dt.is_integer() and dt.get_canonical_name() != "BIPOLAR" and dt.bitwidth() <= 62


def pack(x: np.ndarray, dt, width: int) -> list[int]:
    """Words of `width` bits (as FINN's npy_to_rtlsim_input(x, dt, width)) for the rows of x's innermost dimension."""
    if not _plain_int(dt):
        from finn.util.data_packing import npy_to_rtlsim_input

        return npy_to_rtlsim_input(x, dt, width)
    b = dt.bitwidth()
    v = np.asarray(x).reshape(-1, np.asarray(x).shape[-1]).astype(np.int64) & ((1 << b) - 1)
    bits = ((v[:, :, None] >> np.arange(b, dtype=np.int64)) & 1).astype(np.uint8).reshape(len(v), -1)
    packed = np.packbits(bits, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def unpack(words: list[int], dt, shape: tuple, width: int) -> np.ndarray:
    """The array (float32, `shape`) of the words (as FINN's rtlsim_output_to_npy(words, None, dt, shape, width,
    dt.bitwidth()))."""
    if not _plain_int(dt):
        from finn.util.data_packing import rtlsim_output_to_npy

        return np.asarray(rtlsim_output_to_npy(words, None, dt, shape, width, dt.bitwidth()), dtype=np.float32)
    b, k = dt.bitwidth(), shape[-1]
    nbytes = (k * b + 7) // 8
    mask = (1 << (k * b)) - 1
    raw = np.frombuffer(b"".join((int(w) & mask).to_bytes(nbytes, "little") for w in words), dtype=np.uint8)
    bits = np.unpackbits(raw.reshape(len(words), nbytes), axis=1, bitorder="little")[:, :k * b]
    vals = (bits.reshape(len(words), k, b).astype(np.int64) << np.arange(b, dtype=np.int64)).sum(-1)
    if dt.signed():
        vals -= ((vals >> (b - 1)) & 1) << b
    return vals.reshape(shape).astype(np.float32)
