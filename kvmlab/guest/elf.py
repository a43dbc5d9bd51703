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

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
ET_EXEC = 2
EM_386, EM_X86_64 = 3, 62
PT_LOAD = 1

_IDENT = struct.Struct("<4sBBBBB7x")
_EHDR32 = struct.Struct("<16sHHIIIIIHHHHHH")
_EHDR64 = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR32 = struct.Struct("<IIIIIIII")  # type, offset, vaddr, paddr, filesz, memsz, flags, align
_PHDR64 = struct.Struct("<IIQQQQQQ")  # type, flags, offset, vaddr, paddr, filesz, memsz, align


class ElfError(ConfigError):
    """The file is not an ELF executable kvmlab can load; says what was found."""


@dataclass(frozen=True)
class Segment:
    """A ``PT_LOAD``: ``data`` goes to ``paddr``, zeros up to ``memsz``."""

    paddr: int
    vaddr: int
    data: bytes
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
    """The loadable segments and entry point of an ELF32 or ELF64 little-endian executable."""
    if len(data) < _IDENT.size or not is_elf(data):
        raise ElfError(f"{name} is not an ELF file: it starts with {data[:4]!r}, not {ELF_MAGIC!r}")
    _, klass, encoding, _, _, _ = _IDENT.unpack_from(data)
    if encoding != ELFDATA2LSB:
        raise ElfError(f"{name} is a big-endian ELF; x86 kernels are little-endian")
    if klass == ELFCLASS32:
        header, phdr, bits = _EHDR32, _PHDR32, 32
    elif klass == ELFCLASS64:
        header, phdr, bits = _EHDR64, _PHDR64, 64
    else:
        raise ElfError(f"{name} has ELF class {klass}; expected 1 (ELF32) or 2 (ELF64)")
    if len(data) < header.size:
        raise ElfError(f"{name} is cut short: {len(data)} bytes, less than an ELF header")
    _, etype, machine, _, entry, phoff, _, _, _, phentsize, phnum, _, _, _ = header.unpack_from(data)
    if machine not in (EM_386, EM_X86_64):
        raise ElfError(f"{name} is an ELF for machine {machine}, not x86 (3) or x86-64 (62)")
    if etype != ET_EXEC:
        raise ElfError(f"{name} is an ELF of type {etype}, not an executable (2): link it with a fixed address")
    segments = []
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + phdr.size > len(data):
            raise ElfError(f"{name}: program header {i} lies past the end of the file")
        if bits == 32:
            ptype, offset, vaddr, paddr, filesz, memsz, _, _ = phdr.unpack_from(data, at)
        else:
            ptype, _, offset, vaddr, paddr, filesz, memsz, _ = phdr.unpack_from(data, at)
        if ptype != PT_LOAD or memsz == 0:
            continue
        if offset + filesz > len(data):
            raise ElfError(f"{name}: segment {i} claims {filesz} bytes at offset {offset:#x}, past the end of the file")
        if filesz > memsz:
            raise ElfError(f"{name}: segment {i} has more bytes in the file ({filesz}) than in memory ({memsz})")
        segments.append(Segment(paddr, vaddr, bytes(data[offset : offset + filesz]), memsz))
    if not segments:
        raise ElfError(f"{name} has no loadable (PT_LOAD) segment")
    return ElfImage(bits, machine, entry, tuple(segments))


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
