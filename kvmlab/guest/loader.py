"""Putting a program into a VM: assemble, check it fits, write it and the mode's tables, and
point every vCPU at it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..errors import ConfigError
from ..vstate.layout import Range
from ..vstate.vm import Vm
from .constants import load_defines
from .modes import LOAD_ADDRESS, MAX_RESULTS_VCPUS, RESULTS_ADDRESS, RESULTS_STRIDE, EntryPoint, Mode, check_fits, setup_vcpu, write_tables
from .programs import Program, from_source


@dataclass(frozen=True)
class LoadedProgram:
    """What ``Machine.load`` put where."""

    program: Program
    mode: Mode
    address: int
    code: bytes

    @property
    def range(self) -> Range:
        return Range(self.address, self.address + len(self.code))

    @property
    def entry(self) -> EntryPoint:
        return EntryPoint(self.mode, self.address)

    def __repr__(self) -> str:
        """One line (the machine code is in ``code``, the text in ``program.source``): the
        dataclass default printed every byte of the code."""
        return f"<LoadedProgram {self.program!r}, {self.mode.label} mode, {len(self.code)} bytes at {self.range}>"


def as_program(program: Program | str | bytes) -> Program | bytes:
    if isinstance(program, (Program, bytes, bytearray)):
        return program
    if isinstance(program, str):
        return from_source(program, name="<source>")
    raise ConfigError(f"load() takes a Program, assembly text or machine code bytes, not {type(program).__name__}")


def load_program(vm: Vm, program: Program | str | bytes, mode: Mode | str, layout: Mapping[str, int], address: int = LOAD_ADDRESS) -> LoadedProgram:
    """Assembles (if needed) and loads ``program`` at ``address`` for every vCPU of ``vm``."""
    mode = Mode.parse(mode)
    program = as_program(program)
    vcpus = len(vm.vcpus)
    if isinstance(program, Program):
        if vcpus < program.min_vcpus:
            raise ConfigError(f"{program.name} needs at least {program.min_vcpus} vCPUs; this machine has {vcpus}")
        code = program.assemble(mode.bits, address, load_defines(layout, mode, vcpus))
    else:
        code = bytes(program)
        program = Program("<machine code>", "")
    if not code:
        raise ConfigError(f"{program.name} assembled to no bytes at all; nothing to run")
    image = Range(address, address + len(code))
    if not any(rng.contains(address, len(code)) for rng in vm.memory.ranges):
        ram = " and ".join(str(r) for r in vm.memory.ranges)
        devices = [e for e in vm.mmio_bus.entries if e.range.overlaps(image)]
        if any(rng.contains(address) for rng in vm.memory.ranges):
            into = f"; its end would fall into the device window of {devices[0].name!r} {devices[0].range}" if devices else ""
            raise ConfigError(f"{program.name} ({len(code)} bytes) at {image} does not fit in RAM ({ram}){into}")
        if devices:
            raise ConfigError(
                f"{program.name} at {image} would be loaded over the device window of {devices[0].name!r} "
                f"{devices[0].range}; load it into RAM (the default address is {LOAD_ADDRESS:#x})"
            )
        raise ConfigError(f"{program.name} at {image} is not in RAM ({ram}); load it into RAM (the default address is {LOAD_ADDRESS:#x})")
    if vcpus > MAX_RESULTS_VCPUS:
        raise ConfigError(f"bundled programs support up to {MAX_RESULTS_VCPUS} vCPUs (the results area), not {vcpus}")
    check_fits(vm.memory, image.start, image.end, vcpus)
    write_tables(vm.memory, mode)
    vm.memory.fill(RESULTS_ADDRESS, vcpus * RESULTS_STRIDE)
    vm.memory.write(address, code)
    loaded = LoadedProgram(program, mode, address, code)
    for vcpu in vm.vcpus:
        setup_vcpu(vcpu.backend, vm.memory, loaded.entry, vcpu.index)
    return loaded


def read_results(vm: Vm, loaded: LoadedProgram, index: int) -> dict[str, int]:
    """The dwords a bundled program wrote at ``RESULTS + 16 * index``, by field name."""
    fields = loaded.program.results_fields
    base = RESULTS_ADDRESS + index * RESULTS_STRIDE
    return {name: vm.memory.read_u32(base + 4 * i) for i, name in enumerate(fields)}
