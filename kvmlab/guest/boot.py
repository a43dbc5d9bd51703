"""Booting a Multiboot v1 kernel: what a boot loader (GRUB, QEMU's ``-kernel``) does for it.

Two steps, because a bad kernel file must cost nothing: ``prepare`` reads and checks the
kernel and its modules (no VM needed); ``install`` writes them, the Multiboot information and
the firmware's view of them (fw_cfg) into a VM whose vCPUs exist, and puts vCPU 0 at the
kernel's entry in 32-bit protected mode with EAX = the boot loader magic (Multiboot
specification 0.6.96, section 3.2, "Machine state"). The other vCPUs wait for INIT/SIPI from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError
from . import multiboot
from .loader import LoadedProgram
from .modes import Mode, setup_multiboot_entry
from .multiboot import BootImage
from .programs import Program

if TYPE_CHECKING:
    from ..devices.fw_cfg import FwCfg
    from ..vstate.vm import Vm


@dataclass(frozen=True)
class BootRequest:
    """A kernel, its command line and its modules, read and checked."""

    image: BootImage
    name: str
    cmdline: str

    @property
    def full_cmdline(self) -> str:
        """What the kernel sees: its own name, then the command line (as QEMU gives it)."""
        return f"{self.name} {self.cmdline}".strip()


def _read(source, what: str, limit: int) -> tuple[bytes, str]:
    """``source`` (bytes, or the path of a file no bigger than ``limit``) and its name."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), what
    return multiboot.read_input(source, what, limit)


def prepare(kernel, cmdline: str = "", initrd=None, *, memory_size: int) -> BootRequest:
    """Reads and checks ``kernel`` (and ``initrd``): paths or bytes, no bigger than guest RAM."""
    if not isinstance(cmdline, str):
        raise ConfigError(f"cmdline={cmdline!r}: need text")
    data, name = _read(kernel, "kernel", memory_size)
    modules = []
    if initrd is not None:
        module, module_name = _read(initrd, "initrd", memory_size)
        modules.append((module_name, module))
    return BootRequest(multiboot.plan(data, name, modules), name, cmdline)


def check(vm: "Vm", request: BootRequest, reserved=()) -> None:
    """Whether ``request`` fits ``vm``'s memory (segments in RAM, clear of the information
    area and the hole; the strings fit): run before the vCPUs exist, so a refusal costs nothing."""
    multiboot.check(vm.memory, request.image, request.full_cmdline, list(reserved))


def install(vm: "Vm", request: BootRequest, fw_cfg: "FwCfg", reserved=()) -> LoadedProgram:
    """Writes the kernel into ``vm`` and sets vCPU 0 at its entry. ``reserved``: address
    ranges the memory map must show as reserved (the in-kernel IOAPIC/LAPIC pages)."""
    image = request.image
    info = multiboot.write(vm.memory, image, request.full_cmdline, list(reserved))
    kernel_range = image.kernel_range
    initrd_range = (image.modules[0][0], len(image.modules[0][1])) if image.modules else None
    fw_cfg.set_cmdline(request.cmdline)
    fw_cfg.set_kernel(kernel_range.start, kernel_range.size, image.entry, initrd_range)
    setup_multiboot_entry(vm.vcpus[0].backend, vm.memory, image.entry, info, info + multiboot.GDT_OFFSET)
    return LoadedProgram(Program(request.name, ""), Mode.PROTECTED, kernel_range.start, bytes(image.chunks[0][1]))
