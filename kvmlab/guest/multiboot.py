"""Multiboot v1: load a kernel the way GRUB and ``qemu -kernel`` do, and enter it.

The spec (Multiboot 0.6.96), in short:

* The kernel file carries a header in its first 8 KiB, 4-byte aligned: ``magic`` 0x1BADB002,
  ``flags``, ``checksum`` (the three add up to 0). Flag bits 0-15 are requirements the loader
  must meet or refuse: bit 0 page-aligned modules, bit 1 memory information, bit 2 video mode
  (kvmlab has no display and refuses). Bit 16 says the header also gives load addresses (the
  "a.out kludge"); without it the file must be ELF and its program headers say where to load.
* The loader builds the *Multiboot information* structure: memory sizes, the command line
  (QEMU puts the kernel's name as its first word; so does kvmlab), modules (an initrd), a
  memory map, the loader's name.
* It enters the kernel in 32-bit protected mode, paging off, flat 4 GiB segments, interrupts
  off, EAX = 0x2BADB002, EBX = the information structure's address. Only the bootstrap
  processor runs; the others wait for INIT/SIPI.

The information area is a fixed 8 KiB of low RAM (``INFO_AREA``); a kernel segment or module
that would overlap it or the legacy hole, or fall outside RAM, is refused before anything is
written. Kernel and initrd files are read only if they are regular files that fit in guest
memory (``read_input``).
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..vstate.layout import HIGH_RAM_START, LEGACY_HOLE, LOW_RAM_END, MIB, PAGE_SIZE, Range
from .elf import ElfError, check_layout, is_elf, read_elf

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002  # in EAX at the kernel's entry: "a Multiboot loader started you"
SEARCH_LIMIT = 8192
FLAG_PAGE_ALIGN = 1 << 0
FLAG_MEMORY_INFO = 1 << 1
FLAG_VIDEO_MODE = 1 << 2
FLAG_ADDRESSES = 1 << 16
SUPPORTED_REQUIREMENTS = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO

INFO_AREA = Range(0x6000, 0x8000)
GDT_OFFSET = 0x1F00  # the entry GDT, at the end of the information area
_HOLE = Range(*LEGACY_HOLE)  # no machine has RAM there, whatever its memory_mib

# Multiboot information flags (what the structure holds)
MBI_MEMORY = 1 << 0
MBI_CMDLINE = 1 << 2
MBI_MODS = 1 << 3
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9
MBI_SIZE = 120
MMAP_AVAILABLE, MMAP_RESERVED = 1, 2

_HEADER = struct.Struct("<III")
_ADDRESSES = struct.Struct("<IIIII")
_MODULE = struct.Struct("<IIII")
_MMAP_ENTRY = struct.Struct("<IQQI")  # size (20, not counting itself), base, length, type


class MultibootError(ConfigError):
    """The kernel cannot be loaded; says what was wrong with the file or the machine."""


@dataclass(frozen=True)
class MultibootHeader:
    offset: int
    flags: int
    addresses: tuple[int, int, int, int, int] | None  # header, load, load_end, bss_end, entry


@dataclass
class BootImage:
    """What the loader will put where, computed (and checked) before anything is written."""

    name: str
    header: MultibootHeader
    entry: int
    chunks: list[tuple[int, bytes | memoryview, int]]  # (address, data, total size: zeros after data)
    modules: list[tuple[int, bytes, str]] = field(default_factory=list)
    format: str = "ELF32"

    @property
    def kernel_range(self) -> Range:
        return Range(min(a for a, _, _ in self.chunks), max(a + size for a, _, size in self.chunks))

    def __repr__(self) -> str:
        """One line; the default printed every segment's bytes."""
        modules = f", {len(self.modules)} module{'s' if len(self.modules) != 1 else ''}" if self.modules else ""
        chunks = f"{len(self.chunks)} segment{'s' if len(self.chunks) != 1 else ''}"
        return f"<BootImage {self.name}: {self.format}, entry {self.entry:#x}, kernel at {self.kernel_range}, {chunks}{modules}>"


def find_header(data: bytes, name: str = "the kernel") -> MultibootHeader:
    """The first valid multiboot header in the first 8 KiB (4-byte aligned)."""
    limit = min(len(data), SEARCH_LIMIT) - _HEADER.size
    for offset in range(0, max(limit, -1) + 1, 4):
        magic, flags, checksum = _HEADER.unpack_from(data, offset)
        if magic == HEADER_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            addresses = _ADDRESSES.unpack_from(data, offset + _HEADER.size) if flags & FLAG_ADDRESSES else None
            return MultibootHeader(offset, flags, addresses)
    if is_elf(data):
        try:
            check_layout(data, name)  # a truncated ELF lost its header with its tail: say that instead
        except ElfError as err:
            raise MultibootError(str(err)) from None
    what = "an ELF file" if is_elf(data) else f"not an ELF file (it starts with {bytes(data[:8]).hex(' ')})"
    found = ", but its checksum is wrong" if HEADER_MAGIC.to_bytes(4, "little") in data[:SEARCH_LIMIT] else ""
    raise MultibootError(
        f"{name} has no multiboot header in its first {SEARCH_LIMIT} bytes (magic 0x1badb002{found}); it is {what}. "
        "kvmlab boots Multiboot v1 kernels: put the header in a section linked first"
    )


def plan(data: bytes, name: str, modules: list[tuple[str, bytes]] = ()) -> BootImage:
    """Reads the kernel and decides where everything goes (nothing is written yet)."""
    header = find_header(data, name)
    unsupported = header.flags & 0xFFFF & ~SUPPORTED_REQUIREMENTS
    if unsupported & FLAG_VIDEO_MODE:
        raise MultibootError(f"{name} requires a video mode (multiboot flag 2); kvmlab has no display, only a serial port")
    if unsupported:
        raise MultibootError(f"{name} requires multiboot feature bits {unsupported:#x} that kvmlab does not provide")
    if header.addresses is not None:
        header_addr, load_addr, load_end, bss_end, entry = header.addresses
        start = header.offset - (header_addr - load_addr)
        if start < 0 or load_addr > header_addr:
            raise MultibootError(f"{name}: the header's addresses put the load start before the file ({start:#x})")
        end = len(data) if load_end == 0 else start + (load_end - load_addr)
        blob = bytes(data[start:end])
        total = max(len(blob), (bss_end - load_addr) if bss_end else 0)
        image = BootImage(name, header, entry, [(load_addr, blob, total)], format="a.out kludge (header addresses)")
    else:
        try:
            elf = read_elf(data, name)
        except ElfError as err:
            raise MultibootError(f"{err}; and its multiboot header gives no load addresses (flag 16) to use instead") from None
        chunks = [(seg.paddr, seg.data, seg.memsz) for seg in elf.segments]
        # A kernel linked high (virtual != physical, as Linux is) enters at a virtual address:
        # like GRUB, jump to the physical address of the segment that holds it.
        holder = next((seg for seg in elf.segments if seg.vaddr <= elf.entry < seg.vaddr + seg.memsz), None)
        entry = elf.entry - holder.vaddr + holder.paddr if holder is not None else elf.entry
        image = BootImage(name, header, entry, chunks, format=f"ELF{elf.bits}")
    if not any(addr <= image.entry < addr + size for addr, _, size in image.chunks):
        spans = ", ".join(f"[{addr:#x}, {addr + size:#x})" for addr, _, size in image.chunks)
        raise MultibootError(f"{name}: the entry point {image.entry:#x} is not inside anything the kernel loads ({spans})")
    cursor = _align(max(image.kernel_range.end, HIGH_RAM_START), PAGE_SIZE)
    for module_name, module_data in modules:
        image.modules.append((cursor, bytes(module_data), module_name))
        cursor = _align(cursor + len(module_data), PAGE_SIZE)
    return image


def _align(value: int, to: int) -> int:
    return (value + to - 1) & ~(to - 1)


def memory_map(memory, extra_reserved: list[Range] = ()) -> list[tuple[int, int, int]]:
    """(base, length, type) for RAM and the holes: the legacy hole is reserved, never RAM."""
    entries = [(rng.start, rng.size, MMAP_AVAILABLE) for rng in memory.ranges]
    if memory.size > LOW_RAM_END:
        entries.append((LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, MMAP_RESERVED))
    entries += [(rng.start, rng.size, MMAP_RESERVED) for rng in extra_reserved]
    return sorted(entries)


def check(memory, image: BootImage, cmdline: str, extra_reserved: list[Range] = ()) -> None:
    """Every check ``write`` makes, writing nothing: a VMM can refuse a kernel before it
    commits to anything for it (``boot()`` runs this before the vCPUs and the irqchip exist)."""
    write(memory, image, cmdline, extra_reserved, dry_run=True)


def write(memory, image: BootImage, cmdline: str, extra_reserved: list[Range] = (), *, dry_run: bool = False) -> int:
    """Checks, then writes the kernel, its modules and the information structure into
    ``memory``; returns the structure's address (for EBX). ``dry_run``: check only."""
    ram = " and ".join(str(r) for r in memory.ranges)
    placed = [(addr, size, f"{image.name} segment") for addr, _, size in image.chunks]
    placed += [(addr, len(data), f"module {name}") for addr, data, name in image.modules]
    for addr, size, what in placed:
        if size == 0:
            continue
        target = Range(addr, addr + size)
        if target.overlaps(INFO_AREA):
            raise MultibootError(f"{what} at {target} overlaps the multiboot information area {INFO_AREA}; link it elsewhere (e.g. at 1 MiB)")
        if target.overlaps(_HOLE):
            raise MultibootError(
                f"{what} at {target} overlaps the legacy VGA/BIOS hole {_HOLE}, which is never RAM; "
                f"link it below {_HOLE.start:#x} or at {_HOLE.end // MIB} MiB or above"
            )
        if not any(r.contains(addr, size) for r in memory.ranges):
            raise MultibootError(
                f"{what} at {target} ({size} bytes) is outside guest RAM ({ram}): "
                f"the machine needs memory_mib >= {(_align(target.end, 1 << 20)) >> 20}, or the kernel a lower address"
            )
    strings = bytearray()
    info = bytearray(INFO_AREA.size)

    def add_string(text: str) -> int:
        address = INFO_AREA.start + MBI_SIZE + len(strings)
        strings.extend(text.encode() + b"\0")
        return address

    loader = add_string("kvmlab")
    command = add_string(cmdline)
    module_table = bytearray()
    for addr, data, name in image.modules:
        module_table += _MODULE.pack(addr, addr + len(data), add_string(name), 0)
    entries = memory_map(memory, extra_reserved)
    mmap = b"".join(_MMAP_ENTRY.pack(20, base, length, kind) for base, length, kind in entries)
    mods_addr = _align(INFO_AREA.start + MBI_SIZE + len(strings), 4)
    mmap_addr = mods_addr + len(module_table)
    if mmap_addr + len(mmap) > INFO_AREA.start + GDT_OFFSET:
        raise MultibootError(f"the command line and module names ({len(strings)} bytes) do not fit the {INFO_AREA.size} byte information area")
    low = min(memory.size, LOW_RAM_END)
    upper = max(memory.size - HIGH_RAM_START, 0) if memory.size > HIGH_RAM_START else 0
    flags = MBI_MEMORY | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER_NAME
    struct.pack_into("<III", info, 0, flags, low // 1024, upper // 1024)
    struct.pack_into("<I", info, 16, command)
    struct.pack_into("<II", info, 20, len(image.modules), mods_addr if image.modules else 0)
    struct.pack_into("<II", info, 44, len(mmap), mmap_addr)
    struct.pack_into("<I", info, 64, loader)
    info[MBI_SIZE : MBI_SIZE + len(strings)] = strings
    info[mods_addr - INFO_AREA.start : mods_addr - INFO_AREA.start + len(module_table)] = module_table
    info[mmap_addr - INFO_AREA.start : mmap_addr - INFO_AREA.start + len(mmap)] = mmap
    if dry_run:
        return INFO_AREA.start
    for addr, data, size in image.chunks:
        memory.write(addr, data)
        if size > len(data):
            memory.fill(addr + len(data), size - len(data))
    for addr, data, _ in image.modules:
        memory.write(addr, data)
    memory.write(INFO_AREA.start, bytes(info[:GDT_OFFSET]))
    return INFO_AREA.start


#: what ``stat`` calls the files a kernel or initrd cannot be read from
_NOT_REGULAR = ((stat.S_ISDIR, "directory"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"))  # fmt: skip


def read_input(path, what: str, limit: int) -> tuple[bytes, str]:
    """The bytes and file name of the ``what`` ("kernel", "initrd") at ``path``, refused unless
    it is a regular file of at most ``limit`` bytes (the guest's memory: nothing bigger could be
    loaded). Checked before reading, so /dev/zero or a FIFO fail at once instead of filling the
    host's memory or waiting for a writer."""
    path = Path(path)
    try:
        # Checked before opening too: opening a device can do something (a watchdog arms, a
        # tape rewinds). Then checked again on what was opened, in case the name changed.
        _regular_size(os.stat(path), path, what, limit)
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer; O_NOCTTY: a terminal
        # never becomes this process's controlling terminal (neither changes a regular file)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            size = _regular_size(os.fstat(fd), path, what, limit)
            with open(fd, "rb", closefd=False) as file:
                data = file.read(size + 1)  # one byte more than stat said: catches a file that grows
        finally:
            os.close(fd)
    except OSError as err:
        raise MultibootError(f"cannot read the {what} {str(path)!r}: {err.strerror}") from None
    if len(data) > size:
        raise MultibootError(
            f"the {what} {str(path)!r} grew while kvmlab read it (it said {size:,} bytes): "
            "boot from a file nothing is writing (a copy of it)"
        )
    return data, path.name


def _regular_size(info: os.stat_result, path: Path, what: str, limit: int) -> int:
    """``info``'s size, if it is a regular file that fits in ``limit`` bytes."""
    kind = next((name for test, name in _NOT_REGULAR if test(info.st_mode)), None)
    if kind is not None:
        raise MultibootError(
            f"the {what} {str(path)!r} is a {kind}, not a regular file: kvmlab loads the {what} from a file (copy it into one)"
        )
    if info.st_size > limit:
        raise MultibootError(
            f"the {what} {str(path)!r} is {info.st_size:,} bytes, more than the machine's memory ({limit / MIB:g} MiB): "
            f"give the machine more memory (memory_mib) or use a smaller {what}"
        )
    return info.st_size
