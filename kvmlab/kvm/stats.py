"""Reader for KVM's binary statistics file descriptor (``KVM_GET_STATS_FD``).

Layout (Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD"): a header ``<6I`` (flags,
name_size, num_desc, id_offset, desc_offset, data_offset), then ``num_desc`` descriptors of
``16 + name_size`` bytes each (``<IhHII``: flags, exponent, size, offset, bucket_size, then the
NUL-padded name), then the data block of u64 values. Each descriptor's ``offset`` is relative to
the data block and data is *not* in descriptor order, so every value is read at its own offset.

The descriptors never change for an fd, so they are parsed once; ``read()`` costs one ``pread``
of the data block and one precompiled unpack.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass

from .fd import OwnedFd

_HEADER = struct.Struct("<6I")
_DESC = struct.Struct("<IhHII")

KVM_STATS_TYPE_SHIFT = 0
KVM_STATS_TYPE_MASK = 0xF
KVM_STATS_UNIT_SHIFT = 4
KVM_STATS_UNIT_MASK = 0xF << 4


class StatType(enum.IntEnum):
    CUMULATIVE = 0
    INSTANT = 1
    PEAK = 2
    LINEAR_HIST = 3
    LOG_HIST = 4


class StatUnit(enum.IntEnum):
    NONE = 0
    BYTES = 1
    SECONDS = 2
    CYCLES = 3
    BOOLEAN = 4


@dataclass(frozen=True)
class StatDescriptor:
    name: str
    type: StatType
    unit: StatUnit
    exponent: int
    size: int
    offset: int
    bucket_size: int


class KvmStats(OwnedFd):
    """Owns a stats fd (``OwnedFd``); ``read()`` returns ``{name: value}`` (histograms as lists).

    The fd is owned before its header and descriptors are read: a failed read closes it again.
    """

    def __init__(self, fd: int):
        super().__init__(fd, "KvmStats")
        with self.closed_on_error():
            self._parse(fd)

    def _parse(self, fd: int) -> None:
        """Reads the header and descriptors, once: they never change for an fd."""
        header = os.pread(fd, _HEADER.size, 0)
        flags, name_size, num_desc, id_offset, desc_offset, data_offset = _HEADER.unpack(header)
        self.id = os.pread(fd, name_size, id_offset).split(b"\0", 1)[0].decode()
        desc_size = _DESC.size + name_size
        raw = os.pread(fd, desc_size * num_desc, desc_offset)
        descriptors = []
        for i in range(num_desc):
            base = i * desc_size
            dflags, exponent, size, offset, bucket = _DESC.unpack_from(raw, base)
            name = raw[base + _DESC.size : base + desc_size].split(b"\0", 1)[0].decode()
            descriptors.append(
                StatDescriptor(
                    name=name,
                    type=_enum_or_int(StatType, (dflags & KVM_STATS_TYPE_MASK) >> KVM_STATS_TYPE_SHIFT),
                    unit=_enum_or_int(StatUnit, (dflags & KVM_STATS_UNIT_MASK) >> KVM_STATS_UNIT_SHIFT),
                    exponent=exponent,
                    size=size,
                    offset=offset,
                    bucket_size=bucket,
                )
            )
        self.descriptors: tuple[StatDescriptor, ...] = tuple(descriptors)
        self._data_offset = data_offset
        self._data_len = max((d.offset + 8 * d.size for d in descriptors), default=0)
        self._data = struct.Struct(f"<{self._data_len // 8}Q")
        # (name, index of its first u64 in the data block) for scalar stats, in descriptor order.
        self._scalars = tuple((d.name, d.offset // 8) for d in descriptors if d.size == 1)
        self._histograms = tuple((d.name, d.offset // 8, d.size) for d in descriptors if d.size > 1)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.descriptors]

    def read_raw(self) -> tuple[int, ...]:
        return self._data.unpack(os.pread(self.fd, self._data_len, self._data_offset))

    def read(self, histograms: bool = False) -> dict[str, int | list[int]]:
        values = self.read_raw()
        out: dict[str, int | list[int]] = {name: values[i] for name, i in self._scalars}
        if histograms:
            for name, i, size in self._histograms:
                out[name] = list(values[i : i + size])
        return out


def _enum_or_int(kind, value: int):
    try:
        return kind(value)
    except ValueError:
        return value
