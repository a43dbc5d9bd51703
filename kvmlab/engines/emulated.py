"""The emulated engine: the same machines on a CPU emulator (Unicorn), where /dev/kvm is missing.

Unicorn is QEMU's CPU emulator as a library (PyPI ``unicorn``, GPLv2, hence the optional extra
``kvmlab[emulate]``). Each vCPU gets its own Unicorn instance on its own thread; they share
the guest's RAM (``mem_map_ptr`` of the same host pages kvmlab's ``GuestMemory`` owns).

The engine speaks KVM: an exit is written into a ``kvm_run``-shaped page and handed to the
shared ``handle_kvm_exit``, so the bus, the devices, the metrics and the trace are the very
code the KVM engine uses. What differs is *when* exits are handled:

* MMIO and port I/O arrive as Unicorn callbacks in the middle of an instruction, which needs
  its answer at once. So the exit is handled inside the callback and emulation goes on: one
  ``run_emulation`` call handles many exits and returns only for a kick, a HLT, a stop or a
  fault. ``stepping()`` runs one instruction at a time until one exit has happened, for
  ``Machine.step()``.
* Everything that is not RAM is MMIO (as for KVM, where an access outside every memory slot
  exits to user space), so an access where no device lives is an unhandled MMIO exit on both.
* Every device access happens exactly once, by construction: emulation is only ever stopped
  by this engine's own hooks, on the vCPU's own thread, at the start of a translation block
  (between instructions, where nothing is in flight), never from another thread. Measured:
  a stop that lands while an instruction is part-way through (inside an MMIO callback, or
  from another thread at any moment) makes Unicorn restore that instruction and run it again
  on resume, so its device accesses happen twice, and so does a read-modify-write of RAM
  (``inc [counter]``: 5,883 double increments in 7,049 outside stops). The kick is
  therefore only a pending flag: ``immediate_exit``, which a block hook checks at every
  block start (``uc_kick``: in C where a compiler exists, so a vCPU spinning in RAM needs no
  GIL; a ``rep`` string instruction is a block per iteration and stops between them, as a
  CPU takes interrupts) and ``Vcpu.running`` checks before every run.
* A guest spinning on a device (a read that sees what the same read saw just before) gives
  way briefly, as KVM's pause-loop exiting yields a spinning vCPU: otherwise the vCPU it
  waits for could run only at the interpreter's forced switch, every 5 ms.
* HLT: ``emu_start`` returns by itself only after a HLT (every other return is a stop this
  engine asked for and recorded), so a HLT is known exactly, as a KVM_EXIT_HLT is.
* CPU exceptions (#DE, #UD, INT n): Unicorn does not deliver them through the IDT. kvmlab checks
  whether the guest's IDT could: if not (an empty or too-short table), the CPU would triple
  fault and the exit is KVM_EXIT_SHUTDOWN, as on KVM; if it could, the vCPU stops with an
  error saying the emulated engine does not deliver interrupts (run such guests on KVM).
* An instruction the emulator cannot run ends the vCPU with an error naming its address and
  bytes; KVM's own statistics (``kvm.*``) do not exist here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
from time import perf_counter_ns

from ..errors import ConfigError, EngineUnavailableError, FaultyKvmExit, GuestMemoryError, MachineStateError
from ..guest.asm import disassemble
from ..guest.paging import translate
from ..kvm import structs as ks
from ..metrics import trace as trace_kinds
from ..vstate.cpu_state import CpuConfiguration, CpuidEntry, VcpuSnapshot
from ..kvm.run import (
    EXIT_HLT, EXIT_MMIO, EXIT_REASON_U32, EXIT_SHUTDOWN, IMMEDIATE_EXIT_U8, IO_IN, IO_OUT, MMIO_DATA_U64,
    MMIO_IS_WRITE_U8, MMIO_LEN_U32, MMIO_PHYS_ADDR_U64, PIO_DATA_OFFSET, RUN_MAPPING_SIZE, encode_io, encode_reason,
)  # fmt: skip
from ..vstate.exits import Emulation, Peripherals, handle_kvm_exit
from ..vstate.layout import PAGE_SIZE
from ..vstate.memory import GuestMemory, MemoryRegion
from . import uc_kick
from ..x86 import Cr0, Efer, Msr
from .base import Capabilities, Engine, VcpuBackend, VmBackend

try:
    import unicorn
    from unicorn import x86_const as ux
except ImportError:  # an optional extra
    unicorn = None
    ux = None


INSTALL = "pip install 'kvmlab[emulate]'"
ADDRESS_LIMIT = 1 << 32  # what is not RAM below 4 GiB is MMIO (kvmlab guests live below 4 GiB)
MAX_VCPUS = 256
#: MSRs the emulated CPU is asked for in save state / CPU config dumps (architectural ones).
MSRS = tuple(Msr)
#: leaves whose subleaves matter (ECX selects): deterministic cache, features, topology, XSAVE
SUBLEAF_LEAVES = {4: 8, 7: 2, 0xB: 3, 0xD: 4}
_UNTIL = 0xFFFF_FFFF_FFFF_FFFF
#: A vCPU spinning on a device (see ``_read_done``): after this many identical reads in a row
#: it gives way for this long (a sleep of 50 us takes about 100 us with the kernel's timer slack).
SPIN_READS = 4
SPIN_BACKOFF_S = 50e-6
#: How often the Python block hook (where uc_kick.c cannot be built) hands the GIL on.
HANDOFF_NS = 500_000

log = logging.getLogger("kvmlab.engines")

CAPABILITIES = Capabilities(
    name="emulated",
    label="the emulated engine",
    note=(
        "the emulated engine (Unicorn, a CPU emulator): the same vCPU threads, events, exits, metrics and widgets, "
        "but guest code runs in the emulator, exits are handled inside its run, and KVM's own statistics (kvm.*) do not exist"
    ),
    max_vcpus=MAX_VCPUS,
    irqchip=False,  # no PIC, IOAPIC or LAPIC: one vCPU boots, and HLT always exits
    cpuid_mask=False,  # the emulator's CPUID is its own
    kernel_stats=False,
    mp_state=False,
    single_step=False,  # Machine.step's stepping() runs to the next exit; instruction steps are the debugger's
)

if unicorn is not None:
    _MODES = {16: unicorn.UC_MODE_16, 32: unicorn.UC_MODE_32, 64: unicorn.UC_MODE_64}
    _REGS64 = {name: getattr(ux, f"UC_X86_REG_{name.upper()}") for name in ks.GENERAL_REGISTERS if name != "rflags"}
    _REGS64["rflags"] = ux.UC_X86_REG_RFLAGS
    _REGS32 = {f"r{n[1:]}" if n.startswith("e") else n: getattr(ux, f"UC_X86_REG_{n.upper()}")
               for n in ("eax", "ebx", "ecx", "edx", "esi", "edi", "esp", "ebp", "eip")}  # fmt: skip
    _REGS32["rflags"] = ux.UC_X86_REG_EFLAGS
    _SEGMENTS = {name: getattr(ux, f"UC_X86_REG_{name.upper()}") for name in ("cs", "ds", "es", "fs", "gs", "ss")}


def require_unicorn() -> None:
    if unicorn is None:
        raise EngineUnavailableError(f"engine='emulated' needs the unicorn package (GPLv2, an optional extra): {INSTALL}")


class EmulatedEngine(Engine):
    """Makes emulated VMs. Raises ``EngineUnavailableError`` (with the install command)
    when Unicorn is not installed."""

    name = CAPABILITIES.name
    label = CAPABILITIES.label
    #: offered to a user whose choice cannot run here
    offer = f"runs the same machines on a CPU emulator: {INSTALL}"

    def __init__(self, kvm_path: str | None = None):
        require_unicorn()

    @classmethod
    def unavailable_reason(cls, kvm_path: str | None = None) -> str | None:
        return None if unicorn is not None else f"the unicorn package is not installed ({INSTALL})"

    @classmethod
    def status(cls, kvm_path: str | None = None) -> str:
        return f"Unicorn {unicorn.__version__}"

    @classmethod
    def note(cls) -> str:
        return CAPABILITIES.note

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def create_vm(self, *, irqchip: bool = False, cpuid_mask=None) -> "EmulatedVmBackend":
        self.check_config(irqchip=irqchip, cpuid_mask=cpuid_mask)
        return EmulatedVmBackend()

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        return {"unicorn_version": unicorn.__version__, "max_vcpus": MAX_VCPUS, "kick_check": uc_kick.describe()}


class EmulatedVmBackend(VmBackend):
    capabilities = CAPABILITIES
    irqchip = False

    def __init__(self):
        self.memory: GuestMemory | None = None
        #: indices of the vCPUs inside emu_start now (a spinning vCPU gives way only if
        #: another one runs); a set, as adding and discarding are atomic under the GIL
        self.running: set[int] = set()

    @property
    def regions(self) -> list[MemoryRegion]:
        return self.memory.regions if self.memory is not None else []

    def map_memory(self, memory: GuestMemory) -> None:
        """Remembers the RAM; each vCPU's Unicorn instance maps the same host pages."""
        self.memory = memory

    def mmio_ranges(self) -> list[tuple[int, int]]:
        """Everything below 4 GiB that is not RAM, page-aligned: MMIO, as for KVM."""
        ram = sorted((r.range.start, r.range.end) for r in self.regions)
        gaps, cursor = [], 0
        for start, end in ram:
            if start > cursor:
                gaps.append((cursor, start))
            cursor = max(cursor, end)
        if cursor < ADDRESS_LIMIT:
            gaps.append((cursor, ADDRESS_LIMIT))
        return gaps

    def create_vcpu(self, index: int, count: int) -> "EmulatedVcpuBackend":
        return EmulatedVcpuBackend(self, index)

    def close(self) -> None:
        pass


class EmulatedVcpuBackend(VcpuBackend):
    capabilities = CAPABILITIES

    def __init__(self, vm: EmulatedVmBackend, index: int):
        self.vm = vm
        self.index = index
        self.mp_state: int | None = None  # the emulator has no MP states
        self._page = bytearray(RUN_MAPPING_SIZE)
        u8 = memoryview(self._page)
        self.run_views = (u8, u8.cast("H"), u8.cast("I"), u8.cast("Q"))
        self.run_u8, self.run_u16, self.run_u32, self.run_u64 = self.run_views
        self.uc = None
        self.bits = 16
        self._p: Peripherals | None = None
        self._result = None
        self._vector: int | None = None
        self._stepping = False
        self._exited = False  # an exit happened during this run (stepping)
        self._running = threading.Lock()
        #: this run was stopped by the block hook for a pending kick (not by a HLT)
        self._kicked = False
        self._last_read: tuple[int, int, int] | None = None  # the last access, if a read
        self._same_reads = 0  # how many reads in a row saw what _last_read saw
        self._handed_off_ns = 0  # when the Python block hook last handed the GIL on
        self._kick_state: uc_kick.KickState | None = None  # the C block hook's, where it runs

    # --- the Unicorn instance ------------------------------------------------------------------

    def _create(self, bits: int) -> None:
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, _MODES[bits])
        for region in self.vm.regions:
            uc.mem_map_ptr(region.guest_phys_addr, region.size, unicorn.UC_PROT_ALL, region.host_address)
        for start, end in self.vm.mmio_ranges():
            uc.mmio_map(start, end - start, self._on_mmio_read, start, self._on_mmio_write, start)
        self._kick_state = uc_kick.install(uc, self._page, IMMEDIATE_EXIT_U8, unicorn.UC_HOOK_BLOCK, self._on_block)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_in, None, 1, 0, ux.UC_X86_INS_IN)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_out, None, 1, 0, ux.UC_X86_INS_OUT)
        uc.hook_add(unicorn.UC_HOOK_INTR, self._on_interrupt)
        self.uc, self.bits = uc, bits
        self._regs = _REGS64 if bits == 64 else _REGS32
        self._pc_reg = ux.UC_X86_REG_RIP if bits == 64 else ux.UC_X86_REG_EIP

    def _uc(self):
        if self.uc is None:
            raise MachineStateError(f"vCPU {self.index} has no CPU mode yet: load a program first")
        return self.uc

    # --- the hot path: exits as callbacks --------------------------------------------------------
    #
    # Each callback handles its exit at once and lets the instruction complete. Nothing here
    # stops emulation for a kick: a stop inside an access would make Unicorn run the
    # instruction again (see the module docstring). Only an exit that ends the vCPU (a
    # debug-exit write, a fault) stops at once: that instruction never runs again.

    def _on_block(self, uc, address, size, _):
        """At every block start (the Python fallback of ``uc_kick.c``): a pending kick stops
        here, between two instructions; and every ``HANDOFF_NS`` the GIL is handed on.

        The hand-off lets vCPU threads take turns: each block needs the GIL here, and a vCPU
        spinning in RAM takes it back at once for its next block, so the vCPU it waits for
        hardly runs (measured: 101 vCPUs taking turns to print, over 30 s without). Handing
        it on at every block instead costs a thread switch per block when several spin."""
        if self.run_u8[IMMEDIATE_EXIT_U8]:  # the same test as uc_kick.c
            self._kicked = True
            uc.emu_stop()
        now = perf_counter_ns()
        if now - self._handed_off_ns > HANDOFF_NS:
            self._handed_off_ns = now
            os.sched_yield()

    def _finish(self, result) -> None:
        """After every exit: end the vCPU at once if the exit says so."""
        self._exited = True
        if result is not Emulation.HANDLED:
            self._result = result
            self.uc.emu_stop()  # the vCPU stops for good: the instruction never runs again

    def _read_done(self, kind: int, address: int, value: int) -> int:
        """``SPIN_READS`` reads in a row that saw exactly the same (no write between), while
        another vCPU of this VM runs, are a guest spinning on a device for that vCPU: it
        gives way for ``SPIN_BACKOFF_S``, as KVM's pause-loop exiting yields a spinning vCPU
        to another (``kvm_vcpu_on_spin``).

        Why: a vCPU polling for another vCPU's answer takes the GIL back at once after each
        poll, so the vCPU it waits for runs only at the interpreter's forced switch (5 ms).
        A yield of the CPU (``sched_yield``) helps only when both threads share a core; a
        short sleep always lets the other take the GIL. Measured on the two-vCPU ping-pong,
        5,000 rounds: about 3 polls a round in every run, under 1 s (without: hundreds of
        polls a round; with sched_yield: 2 to 20, varying from run to run). A single vCPU
        reading the same value again and again (a stream of zeros from a data port) has
        nobody to give way to and never sleeps."""
        read = (kind, address, value)
        if read != self._last_read:
            self._last_read, self._same_reads = read, 0
        else:
            self._same_reads += 1
            if self._same_reads >= SPIN_READS and len(self.vm.running) > 1:
                time.sleep(SPIN_BACKOFF_S)
        return value

    # The MMIO hooks make the stores of ``run.encode_mmio`` inline, with the indices bound as
    # default arguments: a call would add ~60 ns to every exit (measured with timeit).
    def _on_mmio_read(
        self, uc, offset, size, base,
        _reason=EXIT_REASON_U32, _mmio=EXIT_MMIO, _addr=MMIO_PHYS_ADDR_U64, _len=MMIO_LEN_U32,
        _write=MMIO_IS_WRITE_U8, _data=MMIO_DATA_U64, _kind=trace_kinds.MMIO_READ,
    ):  # fmt: skip
        u32, u64 = self.run_u32, self.run_u64
        u32[_reason] = _mmio
        u64[_addr] = base + offset
        u32[_len] = size
        self.run_u8[_write] = 0
        self._finish(handle_kvm_exit(self._p, 0))
        return self._read_done(_kind, base + offset, u64[_data])

    def _on_mmio_write(
        self, uc, offset, size, value, base,
        _reason=EXIT_REASON_U32, _mmio=EXIT_MMIO, _addr=MMIO_PHYS_ADDR_U64, _len=MMIO_LEN_U32,
        _write=MMIO_IS_WRITE_U8, _data=MMIO_DATA_U64,
    ):  # fmt: skip
        u32, u64 = self.run_u32, self.run_u64
        u32[_reason] = _mmio
        u64[_addr] = base + offset
        u32[_len] = size
        self.run_u8[_write] = 1
        u64[_data] = value
        self._last_read = None
        self._finish(handle_kvm_exit(self._p, 0))

    def _on_in(self, uc, port, size, _, _data=PIO_DATA_OFFSET, _kind=trace_kinds.IO_IN):
        u8 = self.run_u8
        encode_io(u8, self.run_u16, self.run_u32, self.run_u64, IO_IN, port, size, 1, _data)
        self._finish(handle_kvm_exit(self._p, 0))
        return self._read_done(_kind, port, int.from_bytes(u8[_data : _data + size], "little"))

    def _on_out(self, uc, port, size, value, _, _data=PIO_DATA_OFFSET):
        value &= (1 << (8 * size)) - 1
        u8 = self.run_u8
        encode_io(u8, self.run_u16, self.run_u32, self.run_u64, IO_OUT, port, size, 1, _data)
        u8[_data : _data + size] = value.to_bytes(size, "little")
        self._last_read = None
        self._finish(handle_kvm_exit(self._p, 0))

    def _on_interrupt(self, uc, vector, _):
        self._vector = vector
        uc.emu_stop()

    # --- run_emulation ------------------------------------------------------------------------

    def run_emulation(self, p: Peripherals):
        """Emulates until a kick, a HLT, a stop or a fault (handling every exit on the way);
        with ``stepping()``, until the first exit."""
        self._p = p
        uc = self._uc()
        self._result = self._vector = None
        self._exited = self._kicked = False
        state = self._kick_state
        if state is not None:
            state.kicked = 0
        try:
            with self._running:
                if self._stepping:
                    halted = self._step(uc)
                else:
                    self.vm.running.add(self.index)
                    try:
                        uc.emu_start(self.pc(), _UNTIL)
                    finally:
                        self.vm.running.discard(self.index)
                    self._kicked = self._kicked or (state is not None and bool(state.kicked))
                    # Unicorn returns by itself only after a HLT; every other return is
                    # one of our own stops, each of which left its mark.
                    halted = not (self._kicked or self._result is not None or self._vector is not None)
        except unicorn.UcError as err:
            return self._fault(p, err)
        if self._result is not None:
            return self._result
        if self._vector is not None:
            return self._exception(p, self._vector)
        if self._stepping and self._exited:  # one exit, handled (free runs handle many)
            return Emulation.HANDLED
        if halted:
            if self._code_at(self.pc() - 1, 1) != b"\xf4":
                # Neither our stop nor after a HLT (an instruction this Unicorn halts on that
                # a CPU would not): look at the events and run on, as after a spurious exit.
                log.debug("vCPU %d: emulation returned at %#x for no known reason", self.index, self.pc())
                return Emulation.INTERRUPTED
            encode_reason(self.run_u32, EXIT_HLT)
            return handle_kvm_exit(p, 0)
        # A kick: the block hook stopped between two instructions (or stepping saw it).
        self.run_u8[IMMEDIATE_EXIT_U8] = 0
        p.metrics.interrupted += 1
        if p.trace is not None:
            p.trace(trace_kinds.INTERRUPTED, 0, 0, 0, perf_counter_ns(), 0)
        return Emulation.INTERRUPTED

    def _step(self, uc) -> bool:
        """One instruction at a time until an exit, an interrupt or a kick; True at a HLT
        (known exactly here: the instruction just run was at the old PC and was 0xF4)."""
        while not (self._exited or self._vector is not None or self.run_u8[IMMEDIATE_EXIT_U8]):
            pc = self.pc()
            uc.emu_start(pc, _UNTIL, count=1)
            if self.pc() == pc + 1 and self._code_at(pc, 1) == b"\xf4":
                return True
        return False

    def pc(self) -> int:
        """The linear address of the next instruction (what ``emu_start`` takes)."""
        uc = self.uc
        if self.bits == 64:
            return uc.reg_read(ux.UC_X86_REG_RIP)
        eip = uc.reg_read(ux.UC_X86_REG_EIP)
        if self.bits == 16:
            return (uc.reg_read(ux.UC_X86_REG_CS) << 4) + (eip & 0xFFFF)
        return eip

    def _code_at(self, linear: int, size: int) -> bytes:
        """Up to ``size`` bytes of guest code at a linear address (b"" where there is no RAM)."""
        memory = self.vm.memory
        try:
            return memory.read_available(translate(memory, self.get_sregs().to_dict(), linear), size)
        except GuestMemoryError:
            return b""

    def _fault(self, p: Peripherals, err) -> object:
        pc = self.pc()
        code = self._code_at(pc, 15)
        if err.errno == unicorn.UC_ERR_INSN_INVALID:
            decoded = disassemble(code, self.bits, pc, 1) if code else []
            if not decoded or decoded[0][2].startswith(("ud0", "ud1", "ud2")):
                return self._exception(p, 6)  # an invalid opcode: #UD, as the CPU would raise
            p.metrics.failures += 1
            raise FaultyKvmExit(
                f"the emulated engine cannot run the instruction at {pc:#x}: {decoded[0][1].hex(' ')} ({decoded[0][2]}); "
                "run this guest on KVM"
            )
        p.metrics.failures += 1
        raise FaultyKvmExit(f"emulation failed at {pc:#x} ({code[:8].hex(' ') or 'no code'}): {err}")

    def _exception(self, p: Peripherals, vector: int):
        """Could the guest's IDT deliver ``vector``? If not: a triple fault, i.e. SHUTDOWN."""
        _, base, limit, _ = self.uc.reg_read(ux.UC_X86_REG_IDTR)
        entry = {16: 4, 32: 8, 64: 16}[self.bits]
        if vector * entry + entry - 1 > limit:
            encode_reason(self.run_u32, EXIT_SHUTDOWN)
            return handle_kvm_exit(p, 0)
        p.metrics.failures += 1
        raise FaultyKvmExit(
            f"the guest raised interrupt/exception {vector} at {self.pc():#x} and its IDT ({base:#x}, limit {limit:#x}) "
            "could deliver it, but the emulated engine does not deliver interrupts; run this guest on KVM"
        )

    # --- the kick ------------------------------------------------------------------------------

    def interrupt(self, thread_ident: int) -> None:
        """The second half of the kick, which here is nothing: ``immediate_exit`` (set by the
        caller) is the pending flag the block hook checks at every block start and
        ``Vcpu.running`` checks before every run, so no kick is lost, and no other thread
        ever stops this emulator (that is what keeps every device access exactly once)."""

    @contextlib.contextmanager
    def stepping(self):
        self._stepping = True
        try:
            yield
        finally:
            self._stepping = False

    def kvmclock_ctrl(self) -> None:
        """No kvmclock in the emulator: nothing to tell the guest."""

    # --- registers -----------------------------------------------------------------------------

    def get_regs(self) -> ks.kvm_regs:
        regs = ks.kvm_regs()
        if self.uc is None:
            regs.rip, regs.rflags = 0xFFF0, 2  # the x86 reset state, as KVM reports it
            return regs
        uc = self.uc
        for name, reg in self._regs.items():
            setattr(regs, name, uc.reg_read(reg))
        return regs

    def set_regs(self, regs: ks.kvm_regs) -> None:
        uc = self._uc()
        mask = (1 << 64) - 1 if self.bits == 64 else 0xFFFF_FFFF
        for name, reg in self._regs.items():
            uc.reg_write(reg, getattr(regs, name) & mask)

    def get_sregs(self) -> ks.kvm_sregs:
        sregs = ks.kvm_sregs()
        if self.uc is None:  # the reset state, as KVM reports it before any setup
            for name in ("cs", "ds", "es", "fs", "gs", "ss"):
                segment = getattr(sregs, name)
                segment.limit, segment.present, segment.s, segment.type = 0xFFFF, 1, 1, 3
            sregs.cs.selector, sregs.cs.base, sregs.cs.type = 0xF000, 0xFFFF0000, 11
            sregs.idt.limit = sregs.gdt.limit = 0xFFFF
            sregs.cr0 = 0x60000010
            return sregs
        uc = self.uc
        for name in ("cr0", "cr2", "cr3", "cr4") + (("cr8",) if self.bits == 64 else ()):  # CR8 exists in long mode only
            setattr(sregs, name, uc.reg_read(getattr(ux, f"UC_X86_REG_{name.upper()}")))
        sregs.efer = uc.reg_read(ux.UC_X86_REG_MSR, Msr.EFER)
        sregs.apic_base = uc.reg_read(ux.UC_X86_REG_MSR, 0x1B)
        for table in ("gdt", "idt"):
            _, base, limit, _ = uc.reg_read(getattr(ux, f"UC_X86_REG_{table.upper()}R"))
            getattr(sregs, table).base, getattr(sregs, table).limit = base, limit
        real = not sregs.cr0 & Cr0.PE
        for name, reg in _SEGMENTS.items():
            self._describe_segment(getattr(sregs, name), uc.reg_read(reg), real, sregs.gdt.base, code=name == "cs")
        sregs.tr.type, sregs.tr.present, sregs.tr.limit = 11, 1, 0xFFFF
        sregs.ldt.unusable = 1
        return sregs

    def _describe_segment(self, segment, selector: int, real: bool, gdt_base: int, code: bool) -> None:
        """A segment cache from its selector: base = selector * 16 in real mode, else from the
        descriptor in the guest's GDT (Unicorn only exposes selectors)."""
        segment.selector = selector
        if real:
            segment.base, segment.limit, segment.present, segment.s = selector << 4, 0xFFFF, 1, 1
            segment.type = 11 if code else 3
            return
        try:
            low, high = struct.unpack("<II", self.vm.memory.read(gdt_base + (selector & ~7), 8)) if selector & ~7 else (0, 0)
        except GuestMemoryError:
            low = high = 0
        limit = (low & 0xFFFF) | (high & 0x000F0000)
        granular = high >> 23 & 1
        segment.base = (low >> 16) | ((high & 0xFF) << 16) | (high & 0xFF000000)
        segment.limit = (limit << 12) | 0xFFF if granular else limit
        segment.type, segment.s, segment.dpl, segment.present = high >> 8 & 0xF, high >> 12 & 1, high >> 13 & 3, high >> 15 & 1
        segment.avl, segment.l, segment.db, segment.g = high >> 20 & 1, high >> 21 & 1, high >> 22 & 1, granular
        segment.unusable = 0 if selector & ~7 else 1

    def set_sregs(self, sregs: ks.kvm_sregs) -> None:
        """Enters the CPU mode ``sregs`` describe (a new Unicorn instance if the code width
        changes), then loads control registers, tables and segment selectors."""
        long_mode = sregs.efer & Efer.LMA and sregs.cs.l
        bits = 64 if long_mode else 32 if sregs.cr0 & Cr0.PE else 16
        if self.uc is None or bits != self.bits:
            self._create(bits)
        uc = self.uc
        uc.reg_write(ux.UC_X86_REG_GDTR, (0, sregs.gdt.base, sregs.gdt.limit, 0))
        uc.reg_write(ux.UC_X86_REG_IDTR, (0, sregs.idt.base, sregs.idt.limit, 0))
        uc.reg_write(ux.UC_X86_REG_CR3, sregs.cr3)
        uc.reg_write(ux.UC_X86_REG_CR4, sregs.cr4)
        uc.reg_write(ux.UC_X86_REG_MSR, (Msr.EFER, sregs.efer))
        uc.reg_write(ux.UC_X86_REG_CR0, sregs.cr0)
        for name, reg in _SEGMENTS.items():
            uc.reg_write(reg, getattr(sregs, name).selector)

    # --- SaveState / DumpCpuConfig ---------------------------------------------------------------

    def _msrs(self) -> dict[int, int]:
        uc = self._uc()
        values = {}
        for index in MSRS:
            try:
                values[index] = uc.reg_read(ux.UC_X86_REG_MSR, index)
            except unicorn.UcError:
                pass
        return values

    def save_state(self) -> VcpuSnapshot:
        uc = self._uc()
        fpu = ks.kvm_fpu().to_dict()
        fpu.update(
            fcw=uc.reg_read(ux.UC_X86_REG_FPCW), fsw=uc.reg_read(ux.UC_X86_REG_FPSW), mxcsr=uc.reg_read(ux.UC_X86_REG_MXCSR),
            xmm=[uc.reg_read(getattr(ux, f"UC_X86_REG_XMM{i}")).to_bytes(16, "little") for i in range(8 if self.bits != 64 else 16)],
        )  # fmt: skip
        debug = ks.kvm_debugregs().to_dict()
        debug.update(db=[uc.reg_read(getattr(ux, f"UC_X86_REG_DR{i}")) for i in range(4)], dr6=uc.reg_read(ux.UC_X86_REG_DR6), dr7=uc.reg_read(ux.UC_X86_REG_DR7))
        return VcpuSnapshot(
            vcpu=self.index,
            regs=self.get_regs().to_dict(),
            sregs=self.get_sregs().to_dict(),
            fpu=fpu,
            msrs=self._msrs(),
            lapic=None,
            xsave=None,
            xcrs={},
            vcpu_events={},
            mp_state=0,
            debug_regs=debug,
        )

    def dump_cpu_config(self) -> CpuConfiguration:
        """CPUID as the emulated CPU answers it: CPUID run in a scratch instance of the same
        CPU (not the vCPU's own, whose state must not change), leaf by leaf."""
        probe = unicorn.Uc(unicorn.UC_ARCH_X86, _MODES[self.bits])
        probe.mem_map(0, PAGE_SIZE)
        probe.mem_write(0, b"\x0f\xa2")  # cpuid

        def cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
            probe.reg_write(ux.UC_X86_REG_EAX, leaf)
            probe.reg_write(ux.UC_X86_REG_ECX, subleaf)
            probe.emu_start(0, 2, count=1)
            return tuple(probe.reg_read(r) & 0xFFFF_FFFF for r in (ux.UC_X86_REG_EAX, ux.UC_X86_REG_EBX, ux.UC_X86_REG_ECX, ux.UC_X86_REG_EDX))

        entries = []
        for first in (0, 0x8000_0000):
            top = cpuid(first, 0)[0]
            for leaf in range(first, min(top, first + 0x40) + 1):
                for subleaf in range(SUBLEAF_LEAVES.get(leaf, 1)):
                    eax, ebx, ecx, edx = cpuid(leaf, subleaf)
                    flags = 1 if leaf in SUBLEAF_LEAVES else 0
                    entries.append(CpuidEntry(leaf, subleaf, flags, eax, ebx, ecx, edx))
        return CpuConfiguration(vcpu=self.index, cpuid=entries, msrs=self._msrs())

    def close(self) -> None:
        self.uc = None

