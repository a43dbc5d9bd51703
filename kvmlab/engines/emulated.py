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
  CPU takes interrupts) and ``Vcpu.running`` checks before every run. The engine's own stops
  (an interrupt window, a vector raised during an exit) are made by the same hook, on flags
  of their own, never on ``immediate_exit``.
* A guest spinning on a device (a read that sees what the same read saw just before) gives
  way briefly, as KVM's pause-loop exiting yields a spinning vCPU: otherwise the vCPU it
  waits for could run only at the interpreter's forced switch, every 5 ms.
* HLT: ``emu_start`` returns by itself only after a HLT (every other return is a stop this
  engine asked for and recorded), so a HLT is known exactly, as a KVM_EXIT_HLT is.
* Interrupts and CPU exceptions go through the guest's IVT or IDT as a CPU takes them (Intel
  SDM Vol. 3A, 6.12-6.15): Unicorn stops at an exception (#DE, #UD, #PF, #GP, INT n, INT3)
  without delivering it, and this engine pushes the frame, loads CS:RIP from the gate and
  clears the flags itself (``_enter``; the table is read by ``guest.idt.read_gate``, through
  the guest's paging), escalating to #GP/#NP, #DF and a triple fault (KVM_EXIT_SHUTDOWN, with
  a log line naming the vector and the reason) where the table cannot deliver. IRET is
  Unicorn's own. A raised interrupt uses KVM's protocol: ``inject_interrupt`` queues one
  vector, delivered before the next run's first instruction; ``request_interrupt_window``
  makes the run end with KVM_EXIT_IRQ_WINDOW_OPEN at the first block start with IF=1 (IF
  changes only at STI, POPF and IRET, which end a block; the STI shadow is stepped over:
  ``_in_shadow``); each return writes ``if_flag`` and ``ready_for_interrupt_injection``.
  A HLT with IF=1 is KVM_EXIT_HLT with ``if_flag`` set, so the vCPU waits for an interrupt.
* An instruction the emulator cannot run ends the vCPU with an error naming its address and
  bytes; KVM's own statistics (``kvm.*``) do not exist here.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import struct
import threading
import time
from time import perf_counter_ns

from ..errors import ConfigError, EngineUnavailableError, FaultyKvmExit, GuestMemoryError, MachineStateError, UndeliverableVector
from ..guest.asm import disassemble
from ..guest.idt import Gate, read_descriptor, read_gate
from ..guest.modes import Mode
from ..guest.paging import NotMapped, read_linear, translate, write_linear
from ..kvm import structs as ks
from ..metrics import trace as trace_kinds
from ..vstate.cpu_state import CpuConfiguration, CpuidEntry, VcpuSnapshot
from ..kvm.run import (
    EXIT_HLT, EXIT_IRQ_WINDOW_OPEN, EXIT_MMIO, EXIT_REASON_U32, EXIT_SHUTDOWN, IF_FLAG_U8, IMMEDIATE_EXIT_U8, IO_IN,
    IO_OUT, MMIO_DATA_U64, MMIO_IS_WRITE_U8, MMIO_LEN_U32, MMIO_PHYS_ADDR_U64, PIO_DATA_OFFSET,
    READY_FOR_INTERRUPT_INJECTION_U8, REQUEST_INTERRUPT_WINDOW_U8, RUN_MAPPING_SIZE, encode_io, encode_reason,
)  # fmt: skip
from ..vstate.coalesced import Ring
from ..vstate.exits import Emulation, Peripherals, handle_kvm_exit
from ..vstate.interrupts import FIRST_INTERRUPT_VECTOR
from ..vstate.layout import PAGE_SIZE
from ..vstate.memory import GuestMemory, MemoryRegion
from . import uc_kick
from ..x86 import (
    CONTRIBUTORY_VECTORS, ERROR_CODE_VECTORS, FAULT_VECTORS, Cr0, Cr4, Efer, GateType, Msr, PageFaultError, Rflags,
    SelectorError, Vector,
)  # fmt: skip
from .base import Capabilities, Engine, VcpuBackend, VmBackend

try:
    import unicorn
    from unicorn import x86_const as ux
except ImportError:  # an optional extra
    unicorn = None
    ux = None
import capstone  # a dependency of kvmlab's own (the disassembler)


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

#: Where an event being delivered came from: it decides the error code, the EXT bit and the
#: double-fault class (SDM Vol. 3A, 6.13 and 6.15).
EXTERNAL = "an interrupt"  # raise_irq, through inject_interrupt
SOFTWARE = "INT n"  # INT n, INT3, INTO: no error code, EXT = 0, benign
EXCEPTION = "an exception"  # raised by the CPU (or while delivering another event)
#: the 64-bit TSS's IST1 field (SDM Vol. 3A, Figure 8-11)
TSS64_IST1 = 0x24
#: instructions that write the stack when no memory operand names the faulting address
_STACK_WRITERS = frozenset({"push", "pushf", "pushfd", "pushfq", "pusha", "pushal", "call", "enter"})
#: the emulation paused and goes on within the same run (``_emulate``)
_GO_ON = object()
# Plain ints: an IntFlag's & or | costs ~0.7 us, 20 times an int's (measured with timeit).
_IF, _PG, _RF, _VM = int(Rflags.IF), int(Cr0.PG), int(Rflags.RF), int(Rflags.VM)
#: what entering a handler clears: in real mode IF, TF and AC; else TF, NT, RF and VM (and IF
#: through an interrupt gate)
_REAL_CLEARED = int(Rflags.IF | Rflags.TF | Rflags.AC)
_CLEARED = int(Rflags.TF | Rflags.NT | Rflags.RF | Rflags.VM)

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
    interrupt_injection=True,  # delivered through the guest's IVT/IDT as a CPU does, behind KVM's kvm_run protocol
    ioeventfd=True,  # matched in the MMIO and port callbacks, as KVM matches them inside KVM_RUN
    coalesced_mmio=True,  # a ring of the engine's own in KVM's layout, drained by the same code
    coalesced_pio=True,
)

if unicorn is not None:
    _MODES = {16: unicorn.UC_MODE_16, 32: unicorn.UC_MODE_32, 64: unicorn.UC_MODE_64}
    _REGS64 = {name: getattr(ux, f"UC_X86_REG_{name.upper()}") for name in ks.GENERAL_REGISTERS if name != "rflags"}
    _REGS64["rflags"] = ux.UC_X86_REG_RFLAGS
    _REGS32 = {f"r{n[1:]}" if n.startswith("e") else n: getattr(ux, f"UC_X86_REG_{n.upper()}")
               for n in ("eax", "ebx", "ecx", "edx", "esi", "edi", "esp", "ebp", "eip")}  # fmt: skip
    _REGS32["rflags"] = ux.UC_X86_REG_EFLAGS
    _SEGMENTS = {name: getattr(ux, f"UC_X86_REG_{name.upper()}") for name in ("cs", "ds", "es", "fs", "gs", "ss")}
    _EFLAGS = ux.UC_X86_REG_EFLAGS  # its low 32 bits in every mode, IF among them




def _scalar_reader(uc):
    """``uc.reg_read`` for a register of up to 64 bits, through Unicorn's C function: the
    binding's own method costs ~2.4 us a call (measured), this about a tenth. Interrupt
    delivery reads a dozen registers."""
    uclib = uc_kick._unicorn_library()
    if uclib is None:
        return uc.reg_read
    handle, value, read = uc._uch, ctypes.c_uint64(), uclib.uc_reg_read
    where = ctypes.byref(value)

    def reg(reg_id: int) -> int:
        value.value = 0
        read(handle, reg_id, where)
        return value.value

    return reg


def _escalate(vector: int, source: str, failure: UndeliverableVector) -> tuple[int, str, int] | None:
    """What the CPU delivers when delivering ``vector`` failed with ``failure`` (SDM Vol. 3A,
    Table 6-5): #DF after two contributory exceptions or a #PF and then a contributory one
    or a #PF, None (a triple fault) after a failed #DF, else the new exception itself."""
    first_is_exception = source is EXCEPTION
    if first_is_exception and vector == Vector.DF:
        return None
    second = failure.fault
    contributory = second in CONTRIBUTORY_VECTORS
    if first_is_exception and ((vector in CONTRIBUTORY_VECTORS and contributory) or (vector == Vector.PF and (contributory or second == Vector.PF))):
        return Vector.DF, EXCEPTION, 0
    return second, EXCEPTION, failure.error_code


_in_flight_offset: int | None = None
_in_flight_known = False
_in_flight_lock = threading.Lock()


def exception_in_flight_offset() -> int | None:
    """Where, in a saved Unicorn context, QEMU keeps ``old_exception``: the exception being
    delivered, which QEMU's double-fault check reads (``check_exception`` in
    ``target/i386/excp_helper.c``). QEMU sets it back to -1 once it has delivered an
    exception; Unicorn hands the exception to our hook instead and never does, so after a
    #DE the next #DE or #GP arrives as #DF, and the one after that halts emulation silently
    (measured: ``div cx`` twice gave vectors 0 and 8). After each delivery the engine sets
    it back to -1 itself, through ``context_save`` / ``context_restore``.

    The field follows the debug registers DR0-DR7 and four pointers (``CPUX86State`` in
    ``target/i386/cpu.h``): found once per process by writing DR0-DR3 in a scratch
    instance, and checked by reading -1 there, then 0 after a #DE. None if that check
    fails (another Unicorn layout): exceptions are then still delivered, but nested ones
    may be reported as #DF."""
    global _in_flight_offset, _in_flight_known
    with _in_flight_lock:
        if _in_flight_known:
            return _in_flight_offset
        _in_flight_known = True
        try:
            _in_flight_offset = _find_exception_in_flight()
        except unicorn.UcError as err:
            log.info("emulated engine: cannot find Unicorn's exception in flight (%s); nested exceptions may arrive as #DF", err)
        return _in_flight_offset


def _find_exception_in_flight() -> int | None:
    probe = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_16)
    probe.mem_map(0, PAGE_SIZE)
    probe.mem_write(0, b"\x31\xc9\xf7\xf1")  # xor cx, cx; div cx: a #DE
    marks = [0x6B760000 + n for n in range(4)]
    for n, mark in enumerate(marks):
        probe.reg_write(getattr(ux, f"UC_X86_REG_DR{n}"), mark)
    before = probe.context_save()
    debug = ctypes.string_at(before.context.value, before.size).find(struct.pack("<4Q", *marks))
    at = debug + 8 * 8 + 4 * ctypes.sizeof(ctypes.c_void_p)
    if debug < 0 or ctypes.c_int32.from_address(before.context.value + at).value != -1:
        log.info("emulated engine: Unicorn's CPU state is not laid out as expected; nested exceptions may arrive as #DF")
        return None
    probe.hook_add(unicorn.UC_HOOK_INTR, lambda uc, vector, _: uc.emu_stop())
    probe.emu_start(0, PAGE_SIZE)
    after = probe.context_save()
    if ctypes.c_int32.from_address(after.context.value + at).value != Vector.DE:
        log.info("emulated engine: Unicorn's exception in flight is not where expected; nested exceptions may arrive as #DF")
        return None
    return at


def _ring(doorbells: dict, address: int, size: int, value: int) -> bool:
    """A write that matches a doorbell adds 1 to its eventfd, as KVM's ``ioeventfd_write``
    does (virt/kvm/eventfd.c): the same address, the same size, and the datamatch value if
    there is one. Called only while some doorbell exists; off that, the callbacks pay one
    truth test of an empty dict."""
    entries = doorbells.get(address)
    if entries:
        value &= (1 << (8 * size)) - 1
        for length, datamatch, eventfd in entries:
            if length == size and (datamatch is None or datamatch == value):
                os.eventfd_write(eventfd, 1)
                return True
    return False


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
        #: the doorbells (``ioeventfd``): address or port -> ((size, datamatch or None,
        #: eventfd), ...). Each vCPU holds these very dicts, and a registration replaces one
        #: entry's tuple whole (atomic under the GIL), so it may come while vCPUs run.
        self.mmio_doorbells: dict[int, tuple] = {}
        self.pio_doorbells: dict[int, tuple] = {}

        # Coalesced MMIO as KVM does it: a write inside a zone goes into a ring page (KVM's
        # layout) instead of exiting; the shared exit handling drains it at the next exit.
        #: the zones as (start, end), read by every MMIO write (empty: one truth test); port
        #: zones, read by every OUT
        self.zones: tuple[tuple[int, int], ...] = ()
        self.pio_zones: tuple[tuple[int, int], ...] = ()
        self._ring_page = bytearray(PAGE_SIZE)
        self._ring = Ring(memoryview(self._ring_page))
        self._push_lock = threading.Lock()  # the writers' side (KVM's ring_lock); drains hold their own

    def coalesced_ring(self) -> memoryview:
        return memoryview(self._ring_page)

    def register_coalesced_mmio(self, address: int, size: int, pio: bool = False) -> None:
        if pio:
            self.pio_zones = (*self.pio_zones, (address, address + size))
        else:
            self.zones = (*self.zones, (address, address + size))

    def unregister_coalesced_mmio(self, address: int, size: int, pio: bool = False) -> None:
        zones = list(self.pio_zones if pio else self.zones)
        zones.remove((address, address + size))
        if pio:
            self.pio_zones = tuple(zones)
        else:
            self.zones = tuple(zones)

    def coalesce(self, address: int, size: int, value: int, pio: int = 0) -> bool:
        """Queues a guest write inside a zone; False when it is in none or the ring is full
        (then it exits, as KVM exits when its ring has no room)."""
        for start, end in self.pio_zones if pio else self.zones:
            if start <= address < end:
                with self._push_lock:
                    return self._ring.push(address, size, value, pio)
        return False

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

    def ioeventfd(self, eventfd: int, address: int, size: int, pio: bool, datamatch: int | None) -> None:
        table = self.pio_doorbells if pio else self.mmio_doorbells
        table[address] = table.get(address, ()) + ((size, datamatch, eventfd),)

    def ioeventfd_deassign(self, eventfd: int, address: int, size: int, pio: bool, datamatch: int | None) -> None:
        table = self.pio_doorbells if pio else self.mmio_doorbells
        left = tuple(entry for entry in table.get(address, ()) if entry != (size, datamatch, eventfd))
        if left:
            table[address] = left
        else:
            table.pop(address, None)

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
        self._vector: int | None = None  # an exception or INT n the interrupt hook stopped at
        self._stepping = False
        self._exited = False  # an exit happened during this run (stepping)
        self._running = threading.Lock()
        #: this run was stopped by the block hook for a pending kick (not by a HLT)
        self._kicked = False
        self._last_read: tuple[int, int, int] | None = None  # the last access, if a read
        self._same_reads = 0  # how many reads in a row saw what _last_read saw
        self._handed_off_ns = 0  # when the Python block hook last handed the GIL on
        self._kick_state: uc_kick.KickState | None = None  # the C block hook's, where it runs
        #: the vector KVM_INTERRUPT would hold: delivered at the start of the next run
        self._queued: int | None = None
        # The engine's own stops, for the Python block hook (the C one has them in _kick_state):
        self._watch_if = False  # stop where RFLAGS.IF = 1: an interrupt window is awaited
        self._stop_next = False  # stop at the next block start
        self._skip = False  # ... but pass over the first one (the instruction in an STI shadow)
        self._raised = False  # a vector was raised during an exit of this run (interrupt_pending)
        self._watched = False  # the block hook stopped for one of those
        self._block: int | None = None  # where the last block started
        self._past_shadow: int | None = None  # the PC just after a stepped-over shadow
        self._cr2 = 0  # a page fault's CR2, as Unicorn had it in the interrupt hook
        self._decoder = None  # capstone with details, for page-fault error codes
        self._decoder_bits = 0
        self._mmio_bells = vm.mmio_doorbells  # the VM's dicts themselves: registrations show at once
        self._pio_bells = vm.pio_doorbells

    # --- the Unicorn instance ------------------------------------------------------------------

    def _create(self, bits: int) -> None:
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, _MODES[bits])
        # Runs end only at this engine's own stops, never at an address: exits on, and none
        # set, so emu_start's ``until`` is ignored. With an ``until`` the guest's page tables
        # do not map (``_UNTIL`` is 2**64 - 1), Unicorn 2.1 walks them for it at every run,
        # faults, and leaves CR2 = 0xffff_ffff_ffff_fffe and a #PF recorded as in flight: a
        # paging guest's CR2 changed under it at every kick, and its next #PF or #GP came
        # as a #DF (measured; ``exception_in_flight_offset``).
        with contextlib.suppress(AttributeError, unicorn.UcError):
            uc.ctl_exits_enabled(True)
        for region in self.vm.regions:
            uc.mem_map_ptr(region.guest_phys_addr, region.size, unicorn.UC_PROT_ALL, region.host_address)
        for start, end in self.vm.mmio_ranges():
            uc.mmio_map(start, end - start, self._on_mmio_read, start, self._on_mmio_write, start)
        self._kick_state = uc_kick.install(uc, self._page, IMMEDIATE_EXIT_U8, unicorn.UC_HOOK_BLOCK, self._on_block, _EFLAGS, Rflags.IF)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_in, None, 1, 0, ux.UC_X86_INS_IN)
        uc.hook_add(unicorn.UC_HOOK_INSN, self._on_out, None, 1, 0, ux.UC_X86_INS_OUT)
        uc.hook_add(unicorn.UC_HOOK_INTR, self._on_interrupt)
        self.uc, self.bits = uc, bits
        self._reg = _scalar_reader(uc)
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
        here, between two instructions, and so do the engine's own stops (an awaited
        interrupt window once IF is 1, a vector raised during an exit); and every
        ``HANDOFF_NS`` the GIL is handed on.

        The hand-off lets vCPU threads take turns: each block needs the GIL here, and a vCPU
        spinning in RAM takes it back at once for its next block, so the vCPU it waits for
        hardly runs (measured: 101 vCPUs taking turns to print, over 30 s without). Handing
        it on at every block instead costs a thread switch per block when several spin."""
        self._block = address
        if self.run_u8[IMMEDIATE_EXIT_U8]:  # the same tests as uc_kick.c
            self._kicked = True
            uc.emu_stop()
        elif self._skip:
            self._skip = False
        elif self._stop_next or (self._watch_if and self._reg(_EFLAGS) & _IF):
            self._watched = True
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
        if self._mmio_bells and _ring(self._mmio_bells, base + offset, size, value):
            self._last_read = None
            return  # a doorbell: the eventfd was written, no device is called (KVM_IOEVENTFD)
        vm = self.vm
        if vm.zones and vm.coalesce(base + offset, size, value):
            self._last_read = None
            return  # queued, no exit: the next exit (or kick, HLT, stop) delivers it
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
        if self._pio_bells and _ring(self._pio_bells, port, size, value):
            self._last_read = None
            return  # a doorbell on a port
        vm = self.vm
        if vm.pio_zones and vm.coalesce(port, size, value, 1):
            self._last_read = None
            return  # queued, no exit (a coalesced port zone)
        u8 = self.run_u8
        encode_io(u8, self.run_u16, self.run_u32, self.run_u64, IO_OUT, port, size, 1, _data)
        u8[_data : _data + size] = value.to_bytes(size, "little")
        self._last_read = None
        self._finish(handle_kvm_exit(self._p, 0))

    def _on_interrupt(self, uc, vector, _):
        """An exception or INT n inside an instruction: record it and stop there (Unicorn has
        already restored a faulting instruction, so nothing of it ran; an INT n has ended).

        What Unicorn 2.1 reports (measured, in every mode): DIV by zero calls this hook with
        0 and RIP at the DIV; INT n with n and RIP after it, INT3 with 3, INTO with 4; a
        non-canonical address or a bad segment load 13 with RIP at the instruction; a page
        walk that fails 14, RIP at the instruction, CR2 the address (set here, kept from
        here: see ``_create`` for a run's end that used to overwrite it). No error code,
        for any of them. UD2 and ICEBP (F1) come as UC_ERR_INSN_INVALID from emu_start,
        RIP at the instruction (``_fault``)."""
        self._vector = vector
        if vector == Vector.PF:
            self._cr2 = self._reg(ux.UC_X86_REG_CR2)
        uc.emu_stop()

    # --- run_emulation ------------------------------------------------------------------------

    def run_emulation(self, p: Peripherals):
        """Emulates until a kick, a HLT, a stop or a fault (handling every exit on the way);
        with ``stepping()``, until the first exit.

        Interrupts as KVM runs them (api.rst section 5): a vector ``inject_interrupt``
        queued goes in first, before any instruction; with ``request_interrupt_window`` set
        the run ends with KVM_EXIT_IRQ_WINDOW_OPEN as soon as the guest can take one (at
        once if it can now); and at every return ``if_flag`` and
        ``ready_for_interrupt_injection`` say what they say on KVM. Exceptions the guest
        raises (#DE, #UD, #PF, #GP, INT n, ...) are delivered through its IDT on the way,
        as a CPU does without any exit."""
        self._p = p
        uc = self._uc()
        self._raised = False  # the loop offers pending vectors before every run
        result = self._run(p, uc)
        self._interrupt_fields()
        return result

    def _run(self, p: Peripherals, uc):
        if self._queued is not None:
            vector, self._queued = self._queued, None
            stop = self._deliver(p, vector, EXTERNAL)
            if stop is not None:
                return stop
        window = bool(self.run_u8[REQUEST_INTERRUPT_WINDOW_U8])
        while True:
            once = False
            if window and self._reg(_EFLAGS) & _IF:
                if not self._in_shadow():
                    encode_reason(self.run_u32, EXIT_IRQ_WINDOW_OPEN)
                    return handle_kvm_exit(p, 0)
                once = True  # the instruction after STI (or MOV SS) runs first (SDM Vol. 3A, 6.8.3)
            # In a shadow, the run goes until the next block start: the shadowed instruction
            # is a block of its own. Not a one-instruction emu_start: restarted there after a
            # stop, Unicorn 2.1 runs two instructions for count=1 (measured).
            result = self._emulate(p, uc, watch_if=window and not once, once=once)
            if result is not _GO_ON:
                return result
            if once and self._watched:
                self._past_shadow = self.pc()  # the shadowed instruction ran: no shadow here now

    def _emulate(self, p: Peripherals, uc, *, watch_if: bool, once: bool):
        """One emu_start (or a run of steps); an exit result, or ``_GO_ON`` when emulation
        only paused: an exception was delivered, the IF watch stopped, the instruction in a
        shadow has run (``once``: until the second block start)."""
        self._result = self._vector = None
        self._exited = self._kicked = self._watched = False
        self._past_shadow = None
        self._watch_if, self._stop_next, self._skip = watch_if, self._raised or once, once
        state = self._kick_state
        if state is not None:
            state.kicked = state.watched = 0
            state.watch_if, state.stop_next, state.skip = watch_if, self._stop_next, once
        halted = False
        try:
            with self._running:
                if self._stepping and not once:
                    halted = self._step(uc, watch_if)
                else:
                    self.vm.running.add(self.index)
                    try:
                        uc.emu_start(self.pc(), _UNTIL)
                    finally:
                        self.vm.running.discard(self.index)
                    if state is not None:
                        self._kicked = self._kicked or bool(state.kicked)
                        self._watched = self._watched or bool(state.watched)
                    # Unicorn returns by itself only after a HLT; every other return is
                    # one of our own stops, each of which left its mark.
                    halted = not (self._kicked or self._watched or self._result is not None or self._vector is not None)
        except unicorn.UcError as err:
            self._vector = self._fault(p, err)
        if self._result is not None:
            return self._result
        if self._vector is not None:
            vector, source, error_code = self._exception()
            stop = self._deliver(p, vector, source, error_code)
            return _GO_ON if stop is None else stop
        if self._stepping and self._exited:  # one exit, handled (free runs handle many)
            return Emulation.HANDLED
        if halted:
            if self._code_at(self.pc() - 1, 1) != b"\xf4":
                # Neither our stop nor after a HLT (an instruction this Unicorn halts on that
                # a CPU would not): look at the events and run on, as after a spurious exit.
                log.debug("vCPU %d: emulation returned at %#x for no known reason", self.index, self.pc())
                return Emulation.INTERRUPTED
            encode_reason(self.run_u32, EXIT_HLT)
            self._interrupt_fields()  # if_flag decides: IF=1 waits for an interrupt
            return handle_kvm_exit(p, 0)
        if self._kicked:  # the block hook stopped between two instructions (or stepping saw it)
            self.run_u8[IMMEDIATE_EXIT_U8] = 0
            p.metrics.interrupted += 1
            if p.trace is not None:
                p.trace(trace_kinds.INTERRUPTED, 0, 0, 0, perf_counter_ns(), 0)
            return Emulation.INTERRUPTED
        if self._watched and self._raised:
            # A vector was raised during an exit: back to the loop, which offers it (as
            # KVM returns to user space after every exit)
            self._raised = False
            return Emulation.HANDLED
        return _GO_ON

    def _step(self, uc, watch_if: bool) -> bool:
        """One instruction at a time until an exit, an interrupt or a kick; with
        ``watch_if``, also until RFLAGS.IF is 1; and until a vector raised during an exit.
        True at a HLT (known exactly here: the instruction just run was at the old PC and
        was 0xF4)."""
        u8 = self.run_u8
        while not (self._exited or self._vector is not None):
            if u8[IMMEDIATE_EXIT_U8]:
                self._kicked = True
                break
            if self._raised or (watch_if and self._reg(_EFLAGS) & _IF):
                self._watched = True
                break
            pc = self.pc()
            uc.emu_start(pc, _UNTIL, count=1)
            if self.pc() == pc + 1 and self._code_at(pc, 1) == b"\xf4":
                return True
        return False

    def pc(self) -> int:
        """The linear address of the next instruction (what ``emu_start`` takes)."""
        reg = self._reg
        if self.bits == 64:
            return reg(ux.UC_X86_REG_RIP)
        eip = reg(ux.UC_X86_REG_EIP)
        if self.bits == 16:
            return (reg(ux.UC_X86_REG_CS) << 4) + (eip & 0xFFFF)
        return eip

    def _paging(self) -> dict:
        """What a page walk reads (``paging.translate``), straight from the emulator: far
        cheaper than ``get_sregs``, which also decodes every segment. With paging off only
        CR0 counts (a linear address is physical, and IA-32e mode needs paging), and only
        CR0 is read."""
        reg = self._reg
        cr0 = reg(ux.UC_X86_REG_CR0)
        if not cr0 & _PG:
            return {"cr0": cr0, "cr3": 0, "cr4": 0, "efer": 0}  # EFER.LMA needs paging on
        return {"cr0": cr0, "cr3": reg(ux.UC_X86_REG_CR3), "cr4": reg(ux.UC_X86_REG_CR4), "efer": self.uc.reg_read(ux.UC_X86_REG_MSR, Msr.EFER)}

    def _tables(self) -> dict:
        """``_paging`` and the GDTR and IDTR: what ``idt.read_gate`` reads."""
        tables = self._paging()
        for name in ("gdt", "idt"):
            _, base, limit, _ = self.uc.reg_read(getattr(ux, f"UC_X86_REG_{name.upper()}R"))
            tables[name] = {"base": base, "limit": limit}
        return tables

    def _code_at(self, linear: int, size: int) -> bytes:
        """Up to ``size`` bytes of guest code at a linear address, page by page through the
        guest's paging, as far as they are mapped RAM (b"" where nothing is)."""
        memory, paging = self.vm.memory, self._paging()
        code = b""
        while len(code) < size:
            at = linear + len(code)
            piece = min(size - len(code), (at | 0xFFF) + 1 - at)
            try:
                read = memory.read_available(translate(memory, paging, at), piece)
            except GuestMemoryError:
                break
            code += read
            if len(read) < piece:
                break
        return code

    def _fault(self, p: Peripherals, err) -> int:
        """What a UcError means: an invalid opcode is the #UD a CPU raises (its vector is
        returned, for delivery); anything else ends the vCPU with an error."""
        pc = self.pc()
        code = self._code_at(pc, 15)
        if err.errno == unicorn.UC_ERR_INSN_INVALID:
            decoded = disassemble(code, self.bits, pc, 1) if code else []
            if not decoded or decoded[0][2].startswith(("ud0", "ud1", "ud2")):
                return Vector.UD  # an invalid opcode: #UD, as the CPU would raise
            p.metrics.failures += 1
            raise FaultyKvmExit(
                f"the emulated engine cannot run the instruction at {pc:#x}: {decoded[0][1].hex(' ')} ({decoded[0][2]}); "
                "run this guest on KVM"
            )
        p.metrics.failures += 1
        raise FaultyKvmExit(f"emulation failed at {pc:#x} ({code[:8].hex(' ') or 'no code'}): {err}")

    # --- interrupts and exceptions ----------------------------------------------------------------

    def inject_interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT: ``vector`` waits here and goes in at the start of the next run,
        before any instruction and whatever RFLAGS.IF says, as KVM injects at the next
        entry (``interrupts.offer`` calls this only when the last exit said
        ``ready_for_interrupt_injection``, which a queued vector turns off).

        Refused, as on KVM and with the same message (``idt.read_gate``), when the guest's
        table cannot deliver it: an ``UndeliverableVector`` the vCPU loop turns into an
        error exit. A second vector before the next run is refused too: KVM would replace
        the first, and a vector would be lost."""
        if self._queued is not None:
            raise MachineStateError(
                f"vCPU {self.index}: vector {self._queued} is queued and not delivered yet; "
                "inject the next one after a run, when ready_for_interrupt_injection says so"
            )
        read_gate(self.vm.memory, self._tables(), vector)
        self._queued = vector

    def interrupt_pending(self) -> None:
        """A vector was raised for this vCPU by its own thread, during an exit (a device's
        handler): emulation stops at the next block start and returns, so the vCPU loop can
        offer the vector, as it does after every KVM exit (exits are callbacks here)."""
        self._raised = self._stop_next = True
        if self._kick_state is not None:
            self._kick_state.stop_next = 1

    def _interrupt_fields(self, _if=IF_FLAG_U8, _ready=READY_FOR_INTERRUPT_INJECTION_U8) -> None:
        """``if_flag`` and ``ready_for_interrupt_injection``, as KVM writes them when
        KVM_RUN returns: RFLAGS.IF, and whether a vector may go in now (IF=1, no STI or
        MOV SS shadow, none queued)."""
        u8 = self.run_u8
        enabled = bool(self._reg(_EFLAGS) & _IF)
        u8[_if] = enabled
        u8[_ready] = enabled and self._queued is None and not self._in_shadow()

    def _in_shadow(self) -> bool:
        """Whether the next instruction follows an STI, a MOV SS or a POP SS, after which
        a CPU takes no interrupt for one instruction (SDM Vol. 3A, 6.8.3). Unicorn tracks
        that shadow but does not show it, so this reads the bytes before RIP: ``fb`` (STI),
        ``8e d0``-``8e d7`` (MOV SS from a register), ``17`` (POP SS, outside 64-bit mode).
        A false positive (those bytes ending a longer instruction, an STI that found IF
        already set, or ``sti; idle: jmp idle`` back at its jump) only makes the interrupt
        wait one instruction more: once ``_run`` has stepped over a shadow, it knows there
        is none where it stopped (``_past_shadow``). A MOV SS from memory is not seen (its
        shadow is ignored)."""
        pc = self.pc()
        if pc == self._past_shadow:
            return False
        before = self._code_at(pc - 2, 2)
        if len(before) < 2:
            return False
        return before[1] == 0xFB or (before[0] == 0x8E and before[1] & 0xF8 == 0xD0) or (self.bits != 64 and before[1] == 0x17)

    def _exception(self) -> tuple[int, str, int]:
        """The event Unicorn stopped at, as (vector, source, error code).

        INT n (and INT3, INTO) stops with RIP after the instruction; a fault with RIP at the
        faulting instruction. They share vector numbers (``int 13`` is no #GP and pushes no
        error code), and Unicorn reports the number only, so the block that ran is decoded
        from its start (where the block hook last saw it begin): an INT n ends its block,
        so it is the instruction right before RIP exactly when RIP is past the block start.

        Error codes: a #PF's is worked out (``_page_fault_error_code``); Unicorn keeps the
        others to itself, and kvmlab pushes 0, which is right for most #GP at CPL 0
        (a non-canonical address, an MSR that does not exist) and wrong for the ones that
        name a selector (loading a bad segment selector pushes the selector)."""
        vector = self._vector
        if vector >= FIRST_INTERRUPT_VECTOR or self._int_instruction_before(vector):
            return vector, SOFTWARE, 0
        if vector == Vector.PF:
            self.uc.reg_write(ux.UC_X86_REG_CR2, self._cr2)
            return vector, EXCEPTION, self._page_fault_error_code(self._cr2)
        return vector, EXCEPTION, 0

    def _int_instruction_before(self, vector: int) -> bool:
        state = self._kick_state
        start = state.block if state is not None else self._block
        pc = self.pc()
        if start is None or not start < pc <= start + 2 * PAGE_SIZE:
            return False
        decoded = disassemble(self._code_at(start, pc - start), self.bits, start)
        if not decoded or decoded[-1][0] + len(decoded[-1][1]) != pc:
            return False
        last = decoded[-1][1]
        return last[-2:] == bytes((0xCD, vector)) or (vector == Vector.BP and last[-1:] == b"\xcc") or (vector == Vector.OF and last[-1:] == b"\xce")

    def _deliver(self, p: Peripherals, vector: int, source: str, error_code: int = 0):
        """Delivers ``vector`` as the CPU does: through the guest's table (``_enter``), or,
        where the table cannot, the exception the CPU raises instead (#GP, #NP, #PF), by
        the double-fault rules (SDM Vol. 3A, 6.15, Table 6-5): a contributory exception
        (#DE, #TS, #NP, #SS, #GP) while delivering another, or a contributory one or a #PF
        while delivering a #PF, makes a #DF; anything while delivering the #DF, a triple
        fault. Returns None once a handler is entered, else the KVM_EXIT_SHUTDOWN's result,
        after a log line that says which vectors could not be delivered and why."""
        failures: list[UndeliverableVector] = []
        while True:
            try:
                self._enter(vector, source, error_code)
            except UndeliverableVector as failure:
                failures.append(failure)
                escalated = _escalate(vector, source, failure)
                if escalated is None:
                    log.warning("vCPU %d: triple fault (KVM_EXIT_SHUTDOWN): %s", self.index, "; then ".join(map(str, failures)))
                    encode_reason(self.run_u32, EXIT_SHUTDOWN)
                    return handle_kvm_exit(p, 0)
                vector, source, error_code = escalated
                if failure.cr2 is not None:
                    self.uc.reg_write(ux.UC_X86_REG_CR2, failure.cr2)
                continue
            self._past_shadow = None
            if failures:
                log.info("vCPU %d: %s; vector %d was delivered instead", self.index, "; then ".join(map(str, failures)), vector)
            if source is EXCEPTION:
                self._forget_exception()
            return None

    def _forget_exception(self) -> None:
        """Tells Unicorn the exception was delivered, as QEMU does after delivering one
        itself (``exception_in_flight_offset`` says why and how)."""
        offset = exception_in_flight_offset()
        if offset is None:
            return
        context = self.uc.context_save()
        field = ctypes.c_int32.from_address(context.context.value + offset)
        if field.value != -1:
            field.value = -1
            self.uc.context_restore(context)

    def _enter(self, vector: int, source: str, error_code: int) -> None:
        """Enters the handler of ``vector`` (SDM Vol. 3A, 6.12; real mode Vol. 3B, 20.1.4):
        the frame on the stack, then the flags, CS and RIP. Nothing changes unless all of
        it can be done: ``UndeliverableVector`` says what the CPU would raise instead.

        * real mode: FLAGS, CS, IP (16 bits each) at SS:SP; IF, TF and AC cleared; CS:IP
          from the IVT. No error code.
        * protected mode: EFLAGS, CS, EIP and the error code (for the exceptions that
          have one) as dwords at SS:ESP; TF, NT, RF and VM cleared, IF too through an
          interrupt gate; CS:EIP from the gate.
        * IA-32e mode: RSP (or the gate's IST stack from the TSS) aligned down to 16,
          then SS, RSP, RFLAGS, CS, RIP and the error code as qwords; the same flags.

        The pushed flags have RF set for a fault (SDM Vol. 3A, 17.3.1.1); for an interrupt
        between two iterations of a REP string instruction a CPU sets it too, which this
        does not (no guest of kvmlab's debugs with RF). Refused with an error, as beyond
        what the emulated engine does: a CPL other than 0, virtual-8086 mode, 16-bit gates
        and task gates, compatibility mode."""
        uc, memory = self.uc, self.vm.memory
        tables = self._tables()
        gate = read_gate(memory, tables, vector, external=source is not SOFTWARE)
        flags_reg = self._regs["rflags"]
        flags = self._reg(flags_reg)
        if gate.mode is Mode.REAL:
            sp, ss = self._reg(ux.UC_X86_REG_ESP), self._reg(ux.UC_X86_REG_SS)
            frame = (self._reg(ux.UC_X86_REG_EIP) & 0xFFFF, self._reg(ux.UC_X86_REG_CS), flags & 0xFFFF)
            for n, value in enumerate(frame):  # IP lowest: pushed last
                self._push_physical((ss << 4) + ((sp - 6 + 2 * n) & 0xFFFF), value.to_bytes(2, "little"), vector)
            uc.reg_write(ux.UC_X86_REG_ESP, (sp & ~0xFFFF) | ((sp - 6) & 0xFFFF))
            uc.reg_write(flags_reg, flags & ~_REAL_CLEARED)
            uc.reg_write(ux.UC_X86_REG_CS, gate.selector)
            uc.reg_write(ux.UC_X86_REG_EIP, gate.offset)
            return
        cs = self._reg(ux.UC_X86_REG_CS)
        self._check_deliverable(gate, cs, flags)
        pushed_flags = flags | _RF if source is EXCEPTION and vector in FAULT_VECTORS else flags
        code = [error_code] if source is EXCEPTION and vector in ERROR_CODE_VECTORS else []
        if gate.mode is Mode.LONG:
            rsp = self._reg(ux.UC_X86_REG_RSP)
            top = (self._ist_stack(tables, gate) if gate.ist else rsp) & ~0xF
            frame = [*code, self._reg(ux.UC_X86_REG_RIP), cs, pushed_flags, rsp, self._reg(ux.UC_X86_REG_SS)]
            new_rsp = top - 8 * len(frame)
            self._push(tables, new_rsp, struct.pack(f"<{len(frame)}Q", *frame), vector, 8)
            uc.reg_write(ux.UC_X86_REG_RSP, new_rsp)
            ip_reg = ux.UC_X86_REG_RIP
        else:
            ss = self._reg(ux.UC_X86_REG_SS)
            try:
                stack = read_descriptor(memory, tables, ss)
            except GuestMemoryError as err:
                raise FaultyKvmExit(f"vCPU {self.index}: delivering vector {vector}: the stack segment {ss:#x} cannot be read: {err}") from err
            mask = 0xFFFF_FFFF if stack.db else 0xFFFF
            esp = self._reg(ux.UC_X86_REG_ESP)
            frame = [*code, self._reg(ux.UC_X86_REG_EIP), cs, pushed_flags & 0xFFFF_FFFF]
            new_sp = (esp - 4 * len(frame)) & mask
            self._push(tables, stack.base + new_sp, struct.pack(f"<{len(frame)}I", *frame), vector, 4)
            uc.reg_write(ux.UC_X86_REG_ESP, (esp & ~mask) | new_sp)
            ip_reg = ux.UC_X86_REG_EIP
        cleared = _CLEARED | (_IF if gate.clears_if else 0)
        uc.reg_write(flags_reg, flags & ~cleared)
        uc.reg_write(ux.UC_X86_REG_CS, gate.selector & ~3)
        uc.reg_write(ip_reg, gate.offset)

    def _check_deliverable(self, gate: Gate, cs: int, flags: int) -> None:
        """What the CPU would do but this engine does not: an error that says so."""
        instead = "run this guest on KVM"
        if flags & _VM:
            raise FaultyKvmExit(f"vector {gate.vector}: the emulated engine delivers no interrupts in virtual-8086 mode; {instead}")
        if cs & 3:
            raise FaultyKvmExit(f"vector {gate.vector}: the emulated engine delivers interrupts at CPL 0 only (kvmlab's guests run there), not CPL {cs & 3}; {instead}")
        if gate.type not in (GateType.INTERRUPT, GateType.TRAP):
            raise FaultyKvmExit(f"vector {gate.vector}: the guest's IDT holds a {gate.kind}, which the emulated engine does not enter (32-bit interrupt and trap gates only); {instead}")
        if gate.mode is Mode.LONG and self.bits != 64:
            raise FaultyKvmExit(f"vector {gate.vector}: the emulated engine delivers no interrupts from compatibility mode; {instead}")

    def _ist_stack(self, tables: dict, gate: Gate) -> int:
        """The stack pointer IST entry ``gate.ist`` of the 64-bit TSS holds (SDM Vol. 3A,
        8.7, Figure 8-11: IST1 at offset 0x24), from the TSS the guest loaded with LTR."""
        selector, base, limit, _ = self.uc.reg_read(ux.UC_X86_REG_TR)
        offset = TSS64_IST1 + 8 * (gate.ist - 1)
        if not selector or offset + 7 > limit:
            raise UndeliverableVector(
                f"interrupt vector {gate.vector} ({gate.vector:#x}) cannot be delivered: its gate asks for stack IST{gate.ist}, "
                f"but the task register (selector {selector:#x}, limit {limit:#x}) holds no such entry: ltr a 64-bit TSS first",
                vector=gate.vector, fault=Vector.TS, error_code=(selector & ~3) | SelectorError.EXT,
            )  # fmt: skip
        try:
            return struct.unpack("<Q", read_linear(self.vm.memory, tables, base + offset, 8))[0]
        except GuestMemoryError as err:
            raise FaultyKvmExit(f"vector {gate.vector}: the TSS at {base:#x} (for IST{gate.ist}) cannot be read: {err}") from err

    def _push(self, tables: dict, linear: int, frame: bytes, vector: int, width: int) -> None:
        """Writes an interrupt frame at a linear address, through the guest's paging: a page
        that is not mapped is the #PF a CPU takes while pushing, at the first push that
        fails (the CPU pushes from the top down, ``width`` bytes at a time: CR2 is the
        highest such address that is not mapped)."""
        try:
            write_linear(self.vm.memory, tables, linear, frame)
        except NotMapped as err:
            address = next(at for at in range(linear + len(frame) - width, linear - 1, -width) if not self._mapped(tables, at))
            raise UndeliverableVector(
                f"interrupt vector {vector} ({vector:#x}) cannot be delivered: its {len(frame)}-byte frame goes on the stack "
                f"at {linear:#x}, and the guest's page tables do not map {address:#x}",
                vector=vector, fault=Vector.PF, error_code=PageFaultError.WRITE, cr2=address,
            ) from err  # fmt: skip
        except GuestMemoryError as err:
            raise FaultyKvmExit(f"vector {vector}: the stack at {linear:#x} is not RAM, where the emulated engine pushes interrupt frames: {err}") from err

    def _mapped(self, tables: dict, linear: int) -> bool:
        try:
            translate(self.vm.memory, tables, linear)
        except NotMapped:
            return False
        return True

    def _push_physical(self, address: int, data: bytes, vector: int) -> None:
        try:
            self.vm.memory.write(address, data)
        except GuestMemoryError as err:
            raise FaultyKvmExit(f"vector {vector}: the stack at {address:#x} is not RAM, where the emulated engine pushes interrupt frames: {err}") from err

    def _page_fault_error_code(self, cr2: int) -> int:
        """The error code a CPU pushes for this #PF (SDM Vol. 3A, 4.7), which Unicorn does
        not give: P from a walk of the guest's page tables (a present page faulted for its
        protection), W and I/D from the instruction at RIP (``_access``). Measured on KVM
        and reproduced: a read of a page that is not present 0, a write 2, a
        read-modify-write (``inc [m]``) 2, a write to a read-only page 3, a fetch 0 (I/D
        is only reported with EFER.NXE or CR4.SMEP). Not reproduced: U/S (kvmlab's guests
        run at CPL 0), RSVD (reserved bits set in an entry), PK, SGX and shadow stacks."""
        paging = self._paging()
        try:
            translate(self.vm.memory, paging, cr2)
            code = PageFaultError.PRESENT
        except GuestMemoryError:  # not present (or its table is not in RAM: a CPU reads all ones there)
            code = PageFaultError(0)
        access = self._access(cr2)
        if access == "write":
            code |= PageFaultError.WRITE
        elif access == "fetch" and (paging["efer"] & Efer.NXE or paging["cr4"] & Cr4.SMEP):
            code |= PageFaultError.FETCH
        return int(code)

    def _access(self, cr2: int) -> str:
        """Which access of the instruction at RIP touched ``cr2``: "fetch" (its own bytes
        reach that page), "write" or "read" (the memory operand whose address it is, by
        capstone's decoding and the registers now; a push, call or enter writes the stack).
        Segment bases other than FS and GS are taken as 0, as in kvmlab's flat segments."""
        pc = self.pc()
        if pc <= cr2 < pc + 15 and not disassemble(self._code_at(pc, cr2 - pc), self.bits, pc, 1):
            return "fetch"
        insn = next(self._capstone().disasm(self._code_at(pc, 15), pc, 1), None)
        if insn is None:
            return "read"
        for operand in insn.operands:
            if operand.type != capstone.x86.X86_OP_MEM:
                continue
            start = self._effective_address(insn, operand)
            if start <= cr2 < start + max(operand.size, 1) or start >> 12 == cr2 >> 12:
                return "write" if operand.access & capstone.CS_AC_WRITE else "read"
        return "write" if insn.mnemonic.split()[-1] in _STACK_WRITERS else "read"

    def _effective_address(self, insn, operand) -> int:
        memory = operand.mem
        total = memory.disp
        for reg, scale in ((memory.base, 1), (memory.index, memory.scale)):
            if not reg:
                continue
            name = insn.reg_name(reg)
            value = insn.address + insn.size if name in ("rip", "eip") else self._reg(getattr(ux, f"UC_X86_REG_{name.upper()}"))
            total += scale * value
        if memory.segment:
            name = insn.reg_name(memory.segment)
            if name in ("fs", "gs") and self.bits == 64:
                total += self._reg(getattr(ux, f"UC_X86_REG_{name.upper()}_BASE"))
        return total & ((1 << self.bits) - 1 if self.bits != 16 else 0xFFFF_FFFF)

    def _capstone(self):
        """A capstone decoder with operand details, this vCPU's own (decoders are not
        shared between threads), made on first use."""
        if self._decoder is None or self._decoder_bits != self.bits:
            mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[self.bits]
            self._decoder = capstone.Cs(capstone.CS_ARCH_X86, mode)
            self._decoder.detail = True
            self._decoder_bits = self.bits
        return self._decoder

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

