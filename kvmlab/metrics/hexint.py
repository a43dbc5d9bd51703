"""Integer columns that print in hex: addresses a student reads as ``0xa0004`` and pandas still
treats as integers.

Why not a string column: a student compares (``trace.address == 0xa0004``), sorts, groups and
sums addresses, and exports them; a string would break all of that, and a second column
beside the integer one says everything twice. So the column *is* pandas' nullable ``Int64``
(its values, its dtype name, its Parquet and CSV form), and only its display differs:
``HexArray`` is an ``IntegerArray`` whose scalar formatter writes ``0x...``. Every pandas
operation that keeps the array (slicing, sorting, ``head``, ``groupby`` keys, ``concat``)
keeps the hex display; arithmetic gives a plain ``Int64`` result, which is right: an address
plus one is a number.

The dtype's name stays ``"Int64"`` on purpose: files written from these frames (``to_parquet``
records the dtype by name) read back as plain ``Int64`` anywhere, even where kvmlab is not
installed.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import pandas as pd


class HexDtype(pd.Int64Dtype):
    """``Int64`` whose arrays are ``HexArray`` (the same name, so files never need kvmlab)."""

    @classmethod
    def construct_array_type(cls) -> type["HexArray"]:
        return HexArray


class HexArray(pd.arrays.IntegerArray):
    """A nullable int64 array that pandas displays in hex (``<NA>`` for missing values)."""

    @property
    def dtype(self) -> HexDtype:
        return HexDtype()

    def _formatter(self, boxed: bool = False) -> Callable[[object], str]:
        return _hex_or_na


def _hex_or_na(value: object) -> str:
    return "<NA>" if value is pd.NA else f"{int(value):#x}"


def hex_array(values: Iterable | np.ndarray) -> HexArray:
    """``values`` (ints, numpy integers of any width, ``None``/``pd.NA`` for missing) as a
    ``HexArray``: put it in a DataFrame column and the column shows ``0xa0004``."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        return HexArray(values.astype(np.int64), np.zeros(len(values), dtype=bool))
    return HexArray._from_sequence(list(values), dtype=HexDtype())


__all__ = ["HexArray", "HexDtype", "hex_array"]
