"""Just enough ELF: read the loadable segments of ELF32/ELF64 executables, and write small
ELF32 images (for kernels kvmlab assembles itself).

A loader needs the program headers, not the sections: each ``PT_LOAD`` says "put these file
bytes at this physical address, then zero up to ``memsz``". That is all a multiboot loader
(GRUB, QEMU, kvmlab) does with an ELF kernel.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import ConfigError
from ..vstate.layout import KIB, Range

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
ET_EXEC = 2
EM_386, EM_X86_64 = 3, 62
PT_LOAD = 1
#: The largest program header table kvmlab reads: 64 KiB, Linux's limit (binfmt_elf). Real
#: executables have a handful of headers; more, or a table past the file's end, is corruption.
MAX_PHDR_TABLE = 64 * KIB

_IDENT = struct.Struct("<4sBBBBB7x")
_EHDR32 = struct.Struct("<16sHHIIIIIHHHHHH")
_EHDR64 = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR32 = struct.Struct("<IIIIIIII")  # type, offset, vaddr, paddr, filesz, memsz, flags, align
_PHDR64 = struct.Struct("<IIQQQQQQ")  # type, flags, offset, vaddr, paddr, filesz, memsz, align


class ElfError(ConfigError):
    """The file is not an ELF executable kvmlab can load; says what was found."""


@dataclass(frozen=True)
class Segment:
    """A ``PT_LOAD``: ``data`` goes to ``paddr``, zeros up to ``memsz``. ``data`` is a view of
    the file, not a copy: however many headers name the same bytes, they are held once."""

    paddr: int
    vaddr: int
    data: memoryview
    memsz: int

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


@dataclass(frozen=True)
class ElfImage:
    bits: int
    machine: int
    entry: int
    segments: tuple[Segment, ...]


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def read_elf(data: bytes, name: str = "the file") -> ElfImage:
    """The loadable segments and entry point of an ELF32 or ELF64 little-endian executable.
    Every header field is checked against the file before it is used: a corrupt or truncated
    file is refused with what is wrong, never read past its end or loaded twice over."""
    layout = _read_layout(data, name)
    if layout.machine not in (EM_386, EM_X86_64):
        raise ElfError(f"{name} is an ELF for machine {layout.machine}, not x86 (3) or x86-64 (62)")
    if layout.etype != ET_EXEC:
        raise ElfError(f"{name} is an ELF of type {layout.etype}, not an executable (2): link it with a fixed address")
    loads = _loads(data, layout, name)
    if not loads:
        raise ElfError(f"{name} has no loadable (PT_LOAD) segment")
    view = memoryview(data).toreadonly()
    segments = tuple(Segment(ld.paddr, ld.vaddr, view[ld.offset : ld.offset + ld.filesz], ld.memsz) for ld in loads)
    return ElfImage(layout.bits, layout.machine, layout.entry, segments)


def check_layout(data: bytes, name: str = "the file") -> None:
    """Raises ``ElfError`` if the ELF headers in ``data`` do not fit the file or contradict
    themselves. For a file that is not loaded (no multiboot header in it): a truncated
    kernel lost its header with its tail, and "truncated" is the better explanation."""
    _loads(data, _read_layout(data, name), name)


@dataclass(frozen=True)
class _Layout:
    """The ELF header fields a loader uses; the program header table is inside the file."""

    bits: int
    etype: int
    machine: int
    entry: int
    phoff: int
    phnum: int
    phdr: struct.Struct


@dataclass(frozen=True)
class _Load:
    """A ``PT_LOAD`` program header as the file gives it (``index`` counts every header)."""

    index: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int

    @property
    def range(self) -> Range:
        return Range(self.paddr, self.paddr + self.memsz)


def _read_layout(data: bytes, name: str) -> _Layout:
    if not is_elf(data):
        raise ElfError(f"{name} is not an ELF file: it starts with {data[:4]!r}, not {ELF_MAGIC!r}")
    _check_in_file(data, name, _IDENT.size, "the ELF identification")
    _, klass, encoding, _, _, _ = _IDENT.unpack_from(data)
    if encoding != ELFDATA2LSB:
        raise ElfError(f"{name} is a big-endian ELF; x86 kernels are little-endian")
    if klass == ELFCLASS32:
        header, phdr, bits = _EHDR32, _PHDR32, 32
    elif klass == ELFCLASS64:
        header, phdr, bits = _EHDR64, _PHDR64, 64
    else:
        raise ElfError(f"{name} has ELF class {klass}; expected 1 (ELF32) or 2 (ELF64)")
    _check_in_file(data, name, header.size, "the ELF header")
    _, etype, machine, _, entry, phoff, _, _, _, phentsize, phnum, _, _, _ = header.unpack_from(data)
    if phnum and phentsize != phdr.size:  # without a table (an object file) both are 0
        raise ElfError(
            f"{name} has program header entries of {phentsize} bytes; an ELF{bits} program header is {phdr.size}: "
            "the file is corrupt (rebuild it)"
        )
    if phnum > MAX_PHDR_TABLE // phdr.size:
        raise ElfError(
            f"{name} has {phnum} program headers; kvmlab reads at most {MAX_PHDR_TABLE // phdr.size} "
            f"(a {MAX_PHDR_TABLE // KIB} KiB table, as Linux): the file is corrupt (rebuild it)"
        )
    _check_in_file(data, name, phoff + phnum * phdr.size, "the program header table")
    return _Layout(bits, etype, machine, entry, phoff, phnum, phdr)


def _loads(data: bytes, layout: _Layout, name: str) -> list[_Load]:
    """The ``PT_LOAD`` headers that load something, checked: inside the file, no more file
    bytes than memory, inside the address space, and no two in the same place (so however
    many headers a file has, what they load fits in the address space once)."""
    loads = [load for load in (_unpack(data, layout, i) for i in range(layout.phnum)) if load is not None]
    with_data = [load for load in loads if load.filesz]  # a bss-only segment's offset may lie past the end
    if with_data:
        furthest = max(with_data, key=lambda load: load.offset + load.filesz)
        _check_in_file(data, name, furthest.offset + furthest.filesz, f"segment {furthest.index}")
    for load in loads:
        if load.filesz > load.memsz:
            raise ElfError(
                f"{name}: segment {load.index} has more bytes in the file ({load.filesz}) than in memory ({load.memsz}): "
                "the file is corrupt (rebuild it)"
            )
        if load.range.end > 1 << layout.bits:
            raise ElfError(
                f"{name}: segment {load.index} ({load.memsz} bytes at {load.paddr:#x}) runs past the end of the "
                f"{layout.bits}-bit address space: the file is corrupt (rebuild it)"
            )
    _check_disjoint(loads, name)
    return loads


def _unpack(data: bytes, layout: _Layout, index: int) -> _Load | None:
    """Program header ``index`` if it is a ``PT_LOAD`` with something to load, else None."""
    at = layout.phoff + index * layout.phdr.size
    if layout.bits == 32:
        ptype, offset, vaddr, paddr, filesz, memsz, _, _ = layout.phdr.unpack_from(data, at)
    else:
        ptype, _, offset, vaddr, paddr, filesz, memsz, _ = layout.phdr.unpack_from(data, at)
    return _Load(index, offset, vaddr, paddr, filesz, memsz) if ptype == PT_LOAD and memsz else None


def _check_disjoint(loads: list[_Load], name: str) -> None:
    """Sorted by address, a segment that starts before the one before it ends overlaps it."""
    ordered = sorted(loads, key=lambda load: load.paddr)
    for first, second in zip(ordered, ordered[1:]):
        if first.range.overlaps(second.range):
            raise ElfError(
                f"{name}: segments {first.index} and {second.index} overlap in memory ({first.range} and {second.range}); "
                "the file is corrupt (a linker never overlaps segments): rebuild it"
            )


def _check_in_file(data: bytes, name: str, needed: int, what: str) -> None:
    """Says "truncated" with both sizes: a cut-short copy is the usual cause, not a bad linker."""
    if needed > len(data):
        raise ElfError(
            f"{name} is truncated or corrupt: expected at least {needed} bytes ({what}), the file has {len(data)}; "
            "copy or rebuild it"
        )


def write_elf32(segments: list[tuple[int, bytes, int]], entry: int) -> bytes:
    """An ELF32 x86 executable with one PT_LOAD per ``(paddr, data, memsz)``, vaddr = paddr."""
    phoff = _EHDR32.size
    data_offset = phoff + _PHDR32.size * len(segments)
    headers, blobs = [], []
    offset = (data_offset + 15) & ~15
    for paddr, blob, memsz in segments:
        headers.append(_PHDR32.pack(PT_LOAD, offset, paddr, paddr, len(blob), max(memsz, len(blob)), 7, 16))
        blobs.append((offset, blob))
        offset = (offset + len(blob) + 15) & ~15
    ident = _IDENT.pack(ELF_MAGIC, ELFCLASS32, ELFDATA2LSB, 1, 0, 0)
    header = _EHDR32.pack(ident, ET_EXEC, EM_386, 1, entry, phoff, 0, 0, _EHDR32.size, _PHDR32.size, len(segments), 40, 0, 0)
    image = bytearray(offset)
    image[: len(header)] = header
    for i, h in enumerate(headers):
        image[phoff + i * _PHDR32.size : phoff + (i + 1) * _PHDR32.size] = h
    for at, blob in blobs:
        image[at : at + len(blob)] = blob
    return bytes(image)
