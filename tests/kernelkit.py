"""Builds the test kernels in ``tests/kernels/`` with GNU as and ld, at test time, the way a
kernel's own build would: the tests boot exactly what the assembler made of the sources."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCES = Path(__file__).parent / "kernels"
LINKER_SCRIPT = SOURCES / "kernel.ld"


@dataclass(frozen=True)
class Kernels:
    smp32: Path  # ELF32: serial, multiboot information, fw_cfg, INIT/SIPI, exit code
    smp64: Path  # the same code linked as an ELF64 file (multiboot still enters in 32-bit mode)
    smp32_object: Path  # smp.s assembled but not linked (ET_REL): a loader must refuse it
    spin: Path  # never writes the exit port, interrupts off
    kludge: Path  # a flat binary whose multiboot header gives the load addresses
    absent: Path  # probes PCI, ports and MMIO kvmlab has no device for; exit code 0 if all read as on a PC
    triple: Path  # triple-faults at once (an empty IDT, then UD2)


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr}")


def symbols(path: Path) -> dict[str, int]:
    """A linked kernel's symbol addresses (``nm``), to look at its variables in guest memory."""
    result = subprocess.run(["nm", str(path)], capture_output=True, text=True, check=True)
    return {name: int(value, 16) for value, _, name in (line.split() for line in result.stdout.splitlines() if line.count(" ") == 2)}


def build_kernels(directory: Path) -> Kernels:
    """Assembles and links every test kernel into ``directory``. Without binutils the tests
    skip, unless KVMLAB_REQUIRE_KVM=1 (CI), where that is a failure: gcc brings binutils."""
    missing = [tool for tool in ("as", "ld") if shutil.which(tool) is None]
    if missing:
        message = f"the test kernels need GNU binutils ({', '.join(missing)} not found): apt install binutils"
        if os.environ.get("KVMLAB_REQUIRE_KVM") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    # binutils >= 2.39 warns about our one RWX segment (test kernels keep code and data together)
    quiet = ["--no-warn-rwx-segments"] if "no-warn-rwx-segments" in subprocess.run(["ld", "--help"], capture_output=True, text=True).stdout else []

    def elf(source: str, bits: int, out: str) -> Path:
        obj = directory / f"{out}.o"
        _run("as", f"--{bits}", "-I", str(SOURCES), "-o", str(obj), str(SOURCES / source))
        target = directory / out
        emulation = "elf_i386" if bits == 32 else "elf_x86_64"
        _run("ld", "-m", emulation, "-n", *quiet, "-T", str(LINKER_SCRIPT), "-o", str(target), str(obj))
        return target

    smp32 = elf("smp.s", 32, "smp32.elf")
    smp64 = elf("smp.s", 64, "smp64.elf")
    spin = elf("spin.s", 32, "spin.elf")
    absent = elf("absent.s", 32, "absent.elf")
    triple = elf("triple.s", 32, "triple.elf")
    kludge_object = directory / "kludge.o"
    _run("as", "--32", "-o", str(kludge_object), str(SOURCES / "kludge.s"))
    kludge = directory / "kludge.bin"
    _run("ld", "-m", "elf_i386", "-Ttext=0x100000", "-e", "entry", "--oformat", "binary", "-o", str(kludge), str(kludge_object))
    return Kernels(smp32, smp64, directory / "smp32.elf.o", spin, kludge, absent, triple)
