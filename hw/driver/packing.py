"""FINN's bit packing in plain numpy, for the board's own Python (no qonnx, no FINN, no bitstring).

The accelerator streams each folded tensor's innermost dimension (SIMD or PE values) as one
AXI word. These functions build and read those words exactly as FINN's
`finn.util.data_packing.finnpy_to_packed_bytearray` / `packed_bytearray_to_finnpy` do:

* every value becomes its `bitwidth`-bit pattern (two's complement for INTn, 0 for -1 of
  BIPOLAR, 0b11 for -1 of TERNARY);
* the values of the innermost dimension are concatenated with value 0 in the most
  significant bits (`reverse_inner` flips that order first), and the word is left-padded with
  zero bits to a whole number of bytes;
* the word is written big-endian (`reverse_endian` flips the byte order, which is what the
  DMA needs: the accelerator drivers use reverse_inner=True and reverse_endian=True).

Datatypes are FINN names: "UINT8", "INT4", "BINARY", "BIPOLAR", "TERNARY" (also accepted in
FINN's driver notation "DataType['UINT8']"). Runs on Python 3.10 with numpy 1.21 or newer.
Errors are ValueError with one sentence.
"""

from __future__ import annotations

import math
import re

import numpy as np

__all__ = [
    "Datatype", "datatype", "pack", "unpack", "packed_shape",
    "finnpy_to_packed_bytearray", "packed_bytearray_to_finnpy",
]


class Datatype:
    """The FINN integer datatypes a binarized network streams: name, bit width and value range."""

    def __init__(self, name: str):
        self.name = name
        m = re.fullmatch(r"(U?INT)(\d+)", name)
        if m:
            bits = int(m.group(2))
            if not 1 <= bits <= 64 or (m.group(1) == "INT" and bits < 2):
                raise ValueError(f"Datatype {name} has an unsupported bit width: use UINT1..UINT64 or INT2..INT64.")
            self.bits = bits
            self.signed = m.group(1) == "INT"
            self.min = -(1 << (bits - 1)) if self.signed else 0
            self.max = (1 << (bits - 1)) - 1 if self.signed else (1 << bits) - 1
        elif name == "BINARY":
            self.bits, self.signed, self.min, self.max = 1, False, 0, 1
        elif name == "BIPOLAR":
            self.bits, self.signed, self.min, self.max = 1, True, -1, 1
        elif name == "TERNARY":
            self.bits, self.signed, self.min, self.max = 2, True, -1, 1
        else:
            raise ValueError(f"Datatype {name!r} is not an integer FINN datatype (UINTn, INTn, BINARY, BIPOLAR, "
                             "TERNARY), which is all this driver packs.")

    def __repr__(self) -> str:
        return f"Datatype({self.name!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Datatype) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def allowed(self, values: np.ndarray) -> np.ndarray:
        """Elementwise: is the value one this datatype can hold?"""
        v = np.asarray(values)
        ok = (v >= self.min) & (v <= self.max)
        if v.dtype.kind == "f":
            ok &= v == np.round(v)
        if self.name == "BIPOLAR":
            ok &= v != 0
        return ok

    def to_bits(self, values: np.ndarray) -> np.ndarray:
        """The unsigned `bits`-wide pattern of every value, as uint64."""
        v = np.asarray(values)
        if v.dtype.kind == "f":
            v = np.round(v)
        v = v.astype(np.int64)
        if self.name == "BIPOLAR":
            v = (v + 1) // 2
        mask = np.uint64((1 << self.bits) - 1) if self.bits < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
        return v.astype(np.uint64) & mask

    def from_bits(self, patterns: np.ndarray) -> np.ndarray:
        """Values from their unsigned patterns (uint64), as int64."""
        p = np.asarray(patterns, dtype=np.uint64)
        if self.name == "BIPOLAR":
            return p.astype(np.int64) * 2 - 1
        if self.name == "TERNARY":
            v = p.astype(np.int64)
            return np.where(v == 3, -1, v)
        if self.signed:
            if self.bits == 64:
                return p.view(np.int64).copy()
            v = p.astype(np.int64)
            return np.where(v >= (1 << (self.bits - 1)), v - (1 << self.bits), v)
        return p.astype(np.int64)


def datatype(dt) -> Datatype:
    """A Datatype from "UINT8", "DataType['UINT8']", a qonnx DataType or a Datatype."""
    if isinstance(dt, Datatype):
        return dt
    name = getattr(dt, "name", None) if not isinstance(dt, str) else dt
    if not isinstance(name, str):
        raise ValueError(f"{dt!r} is not a datatype name: use a FINN name such as 'UINT8'.")
    m = re.fullmatch(r"""\s*DataType\[\s*['"]?(\w+)['"]?\s*\]\s*""", name)
    return Datatype(m.group(1) if m else name.strip())


def packed_shape(folded_shape, dt) -> tuple:
    """The uint8 shape `pack` makes of a folded tensor: innermost dimension in whole bytes."""
    dt = datatype(dt)
    folded_shape = tuple(int(d) for d in folded_shape)
    return folded_shape[:-1] + (math.ceil(folded_shape[-1] * dt.bits / 8),)


def pack(values, dt, reverse_inner: bool = False, reverse_endian: bool = False) -> np.ndarray:
    """Pack the innermost dimension of `values` (integers of datatype `dt`) into bytes.

    Returns uint8 of shape values.shape[:-1] + (ceil(n * bits / 8),), identical to FINN's
    finnpy_to_packed_bytearray(values, dt, reverse_inner, reverse_endian).
    """
    dt = datatype(dt)
    v = np.asarray(values)
    if v.dtype.kind not in "biuf":
        raise ValueError(f"Cannot pack values of numpy dtype {v.dtype}: pass integers (or integral floats).")
    if v.ndim == 0:
        v = v.reshape(1)
    if v.size and not np.all(dt.allowed(v)):
        bad = v[~dt.allowed(v)].flat[0]
        raise ValueError(f"Value {bad} does not fit datatype {dt.name} (range {dt.min}..{dt.max}): "
                         "check the input range.")
    n = v.shape[-1]
    if dt.bits == 8 and v.dtype.itemsize == 1 and v.dtype.kind in "iu" and dt.name != "BIPOLAR":
        packed = v.view(np.uint8)  # whole bytes: the container already holds the bit pattern
        if reverse_inner != reverse_endian:
            packed = packed[..., ::-1]
        return np.ascontiguousarray(packed)
    patterns = dt.to_bits(v)
    if reverse_inner:
        patterns = patterns[..., ::-1]
    shifts = np.arange(dt.bits - 1, -1, -1, dtype=np.uint64)
    bits = ((patterns[..., None] >> shifts) & np.uint64(1)).astype(np.uint8)  # MSB first per value
    bits = bits.reshape(v.shape[:-1] + (n * dt.bits,))
    pad = (-n * dt.bits) % 8
    if pad:
        bits = np.concatenate([np.zeros(v.shape[:-1] + (pad,), np.uint8), bits], axis=-1)
    packed = np.packbits(bits, axis=-1)
    if reverse_endian:
        packed = packed[..., ::-1]
    return np.ascontiguousarray(packed)


def unpack(packed, dt, shape=None, reverse_inner: bool = False, reverse_endian: bool = False) -> np.ndarray:
    """Inverse of `pack`: int64 values of datatype `dt`, reshaped to `shape` if given.

    `shape`'s last dimension is the number of values per packed word (it tells the padding
    apart); without `shape`, every bit of the word is taken as a value. Values equal FINN's
    packed_bytearray_to_finnpy(packed, dt, shape, reverse_inner, reverse_endian).
    """
    dt = datatype(dt)
    p = np.asarray(packed)
    if p.dtype != np.uint8:
        raise ValueError(f"Packed data must be a uint8 array, not {p.dtype}.")
    if p.ndim == 0:
        raise ValueError("Packed data must have at least one dimension (the packed words).")
    n = int(shape[-1]) if shape is not None else p.shape[-1] * 8 // dt.bits
    used = n * dt.bits
    if used > p.shape[-1] * 8:
        raise ValueError(f"{n} values of {dt.name} need {used} bits but each packed word has only "
                         f"{p.shape[-1] * 8}.")
    if dt.bits == 8 and p.shape[-1] == n and dt.name not in ("BIPOLAR", "TERNARY"):
        raw = p[..., ::-1] if reverse_inner != reverse_endian else p
        vals = raw.view(np.int8 if dt.signed else np.uint8).astype(np.int64)
    else:
        if reverse_endian:
            p = p[..., ::-1]
        bits = np.unpackbits(np.ascontiguousarray(p), axis=-1)[..., p.shape[-1] * 8 - used:]
        bits = bits.reshape(p.shape[:-1] + (n, dt.bits)).astype(np.uint64)
        shifts = np.arange(dt.bits - 1, -1, -1, dtype=np.uint64)
        patterns = np.bitwise_or.reduce(bits << shifts, axis=-1) if dt.bits > 1 else bits[..., 0]
        if reverse_inner:
            patterns = patterns[..., ::-1]
        vals = dt.from_bits(patterns)
    if shape is not None:
        shape = tuple(int(d) for d in shape)
        if int(np.prod(shape)) != vals.size:
            raise ValueError(f"Packed data of shape {tuple(np.shape(packed))} holds {vals.size} values, "
                             f"not the {int(np.prod(shape))} of shape {shape}.")
        vals = vals.reshape(shape)
    return vals


# FINN's names, for readers who know finn.util.data_packing
def finnpy_to_packed_bytearray(ndarray, dtype, reverse_inner=False, reverse_endian=False):
    return pack(ndarray, dtype, reverse_inner=reverse_inner, reverse_endian=reverse_endian)


def packed_bytearray_to_finnpy(packed_bytearray, dtype, output_shape=None, reverse_inner=False,
                               reverse_endian=False):
    """As FINN's: float32 values (FINN's container type)."""
    return unpack(packed_bytearray, dtype, output_shape, reverse_inner=reverse_inner,
                  reverse_endian=reverse_endian).astype(np.float32)
