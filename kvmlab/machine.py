"""``Machine``: the notebook-facing facade (Firecracker's ``Vmm`` as a user sees it).

>>> from kvmlab import Machine, programs
>>> with Machine(vcpus=2, memory_mib=2) as m:
...     m.load(programs.mmio_counter(), mode="real")
...     m.start()                 # threads start Paused, are resumed; returns at once
...     m.pause()                 # every vCPU; m.pause(1) for one
...     cfg = m.dump_cpu_config(0)
...     st = m.save_state(1)
...     m.resume()
...     print(m.states, m.console.text)

Every call that waits has a timeout (``timeout=`` on the machine, 5 s by default) and raises
instead of hanging; ``close()`` always joins every thread and is safe to call twice. A
machine dropped without ``close()`` is closed by its finalizer.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import weakref
from typing import Callable, Iterable

from .checks import is_whole_number
from .devices import COM1, DEBUG_EXIT_PORT, MAILBOX_BASE, Console, DebugExit, Mailbox, Serial16550
from .devices.base import Device
from .devices.fw_cfg import FW_CFG_PORT, FwCfg
from .devices.pci_host import PCI_CONFIG_PORT, PciHost
from .config import MachineConfig, check_timeout
from .engines import open_engine
from .errors import (
    ConfigError,
    MachineStateError,
    MachineTimeoutError,
    VcpuError,
    VcpuExitedError,
    VcpuNotAllowedError,
    VcpuResponseError,
)
from .guest import boot as multiboot_boot
from .guest.code import code_at
from .guest.constants import machine_layout
from .guest.loader import LoadedProgram, load_program, read_results
from .guest.modes import LOAD_ADDRESS
from .guest.multiboot import BootImage
from .guest.programs import Program
from .metrics import MetricsRegistry
from .metrics.registry import DEFAULT_HISTORY_S, DEFAULT_SAMPLE_HZ
from .metrics.trace import DEFAULT_CAPACITY as DEFAULT_TRACE_CAPACITY
from .vmm import MachineExit, Phase, Vmm
from .vstate.bus import BusDevice, BusEntry
from .vstate.coalesced import Zone
from .vstate.cpu_state import CpuConfiguration, VcpuSnapshot
from .vstate.exit_record import ExitRecord, outcome_of, read_exit
from .vstate.exits import DeviceFailure, Emulation
from .vstate.final_state import TRACE_TAIL, FinalState
from .vstate.doorbells import Doorbell
from .vstate.irq_lines import IrqFd, IrqLine
from .vstate.vcpu import VcpuHandle
from .vstate.kick import install_kick_handler
from .vstate.layout import IRQCHIP_PAGES
from .vstate.memory import GuestMemory
from .vstate.protocol import DumpedCpuConfig, Error, Exited, NotAllowed, Paused, Resumed, SavedState, VcpuEvent, VcpuState, VcpuStatus
from .vstate.vm import Vm


class _Parts:
    """What a Machine owns, apart from the Machine itself: its finalizer closes this (so a
    dropped Machine releases its file descriptors), and no thread holds the Machine."""

    def __init__(self, vmm: Vmm):
        self.vmm = vmm
        self.metrics: MetricsRegistry | None = None  # set at once by Machine.__init__

    @property
    def closed(self) -> bool:
        return self.vmm.phase is Phase.CLOSED

    def close(self) -> None:
        self.vmm.close()


class _KickAfter:
    """Kicks the calling thread out of the guest if it is still there after ``seconds``:
    the same kick as every other (``Vcpu.kick_thread``), aimed at this thread."""

    def __init__(self, seconds: float, vcpu):
        self._vcpu = vcpu
        self._ident = threading.get_ident()
        self._lock = threading.Lock()
        self._armed = True
        self._timer = threading.Timer(seconds, self._kick)
        self._timer.name = "kvmlab step timer"

    def _kick(self) -> None:
        with self._lock:
            if self._armed:
                self._vcpu.kick_thread(self._ident)

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._armed = False
        self._timer.cancel()
        self._timer.join()


def _describe_address(mmio_bus, pio_bus, bus: str, address: int) -> tuple[str, str]:
    """(device, register) at an MMIO address or port, for the per-address metrics."""
    entry = (mmio_bus if bus == "mmio" else pio_bus).resolve(address)
    if entry is None:
        return "(none)", ""
    return entry.name, entry.register_name(address - entry.base)


class Machine:
    """A VM with ``vcpus`` vCPU threads, ``memory_mib`` MiB of RAM and the teaching devices.

    ``engine="auto"`` runs on KVM where ``/dev/kvm`` works and on the emulated engine (Unicorn)
    where it does not; ``"kvm"`` or ``"emulated"`` force one. ``m.engine`` says which runs and
    ``m.engine_note`` what that means.

    Devices: a 16550 serial port at 0x3f8 (``console``), the debug-exit port at 0xf4, fw_cfg
    at 0x510, a PCI host bridge with an empty bus at 0xcf8 (``pci_host``) and the ``mailbox``
    MMIO device at 0xa0000. ``irqchip=True`` adds KVM's in-kernel interrupt
    controllers (then HLT no longer exits to user space; the small programs want it off),
    whose input lines a device drives with ``irq_line(gsi)`` or ``irqfd(gsi)``.

    Metrics (``metrics``): sampled ``sample_hz`` times a second (0: no sampler thread, only a
    sample at start and stop) for the last ``history_s`` seconds; ``trace=True`` records one
    row per exit, up to ``trace_capacity`` rows per vCPU.

    ``strict=True``: an access that reaches no device stops the machine with an error (exit
    code 1, the reason naming the access) instead of reading all ones / dropping it, as a PC.
    """

    def __init__(
        self,
        vcpus: int = 1,
        memory_mib: float = 2,
        *,
        engine: str = "auto",
        irqchip: bool | None = None,
        cpuid_mask: dict | None = None,
        timeout: float = 5.0,
        sample_hz: float = DEFAULT_SAMPLE_HZ,
        history_s: float = DEFAULT_HISTORY_S,
        trace: bool = False,
        trace_capacity: int = DEFAULT_TRACE_CAPACITY,
        kvm_path: str | None = None,
        strict: bool = False,
    ):
        #: the arguments, validated (``MachineConfig``)
        self.config = config = MachineConfig(
            vcpus=vcpus, memory_mib=memory_mib, engine=engine, irqchip=irqchip, cpuid_mask=cpuid_mask,
            timeout=timeout, sample_hz=sample_hz, history_s=history_s, trace=trace,
            trace_capacity=trace_capacity, kvm_path=kvm_path, strict=strict,
        )  # fmt: skip
        install_kick_handler()
        self.timeout = config.timeout
        engine_impl = open_engine(config.engine, config.kvm_path)
        try:
            #: what the engine running this machine can do (``kvmlab.engines.Capabilities``)
            self.capabilities = caps = engine_impl.capabilities
            config.check_engine(caps)
            engine_impl.check_config(irqchip=bool(config.irqchip), cpuid_mask=config.cpuid_mask)
            # The VM and its memory exist from the start; the vCPUs wait for load() or boot(),
            # which decide whether the VM gets KVM's in-kernel irqchip (only possible before them).
            backend = engine_impl.create_vm(cpuid_mask=config.cpuid_mask)
        finally:
            engine_impl.close()
        try:
            vm = Vm(backend, config.memory, strict=config.strict)
        except BaseException:
            backend.close()
            raise
        try:
            if config.irqchip:  # decided: create it now, so no device can take its pages
                vm.enable_irqchip()
            vmm = Vmm(vm, self.timeout)
        except BaseException:
            vm.close()
            raise
        self._parts = parts = _Parts(vmm)
        self._finalizer = weakref.finalize(self, parts.close)  # from here on, nothing can leak
        parts.metrics = metrics = MetricsRegistry(
            vcpus=config.vcpus,
            kernel_stats_expected=caps.kernel_stats,
            sample_hz=config.sample_hz,
            history_s=config.history_s,
            # not a bound method: nothing the threads reach may hold the Machine itself
            describe_address=functools.partial(_describe_address, vm.mmio_bus, vm.pio_bus),
            lines=vmm.irq_lines.metrics,
        )
        if config.trace:
            metrics.enable_trace(config.trace_capacity)
        metrics.before_sample = vmm.coalesced.drain  # a sample sees every coalesced write before it
        metrics.zone_rows = vmm.coalesced.rows
        vmm.on_start.append(metrics.start)
        vmm.on_stop.append(lambda _exit, registry=metrics: registry.stop())
        self._add_standard_devices(vm)
        self.program: LoadedProgram | None = None
        self.kernel: BootImage | None = None

    def _add_standard_devices(self, vm: Vm) -> None:
        """The PC-like devices every machine has (see the class docstring)."""
        self.console = Console()
        self.serial = Serial16550(self.console)
        self.debug_exit = DebugExit()
        self.mailbox = Mailbox()
        self.fw_cfg = FwCfg(self.config.memory, self.config.vcpus)
        self.pci_host = PciHost()
        for device, port in ((self.serial, COM1), (self.debug_exit, DEBUG_EXIT_PORT), (self.fw_cfg, FW_CFG_PORT), (self.pci_host, PCI_CONFIG_PORT)):
            vm.pio_bus.insert(device, port, device.size)
        vm.mmio_bus.insert(self.mailbox, MAILBOX_BASE, self.mailbox.size)
        self._connect_interrupts(self.mailbox)  # its doorbell raises interrupts (programs.mailbox_irq)

    def _create_vcpus(self, irqchip: bool) -> Vmm:
        """Creates the vCPUs (after the in-kernel irqchip, if wanted) and connects them to the
        metrics. Called by ``load()`` and ``boot()``, once: only they know whether the VM
        needs the irqchip, which KVM can only create before the first vCPU."""
        vmm, metrics = self._vmm, self._parts.metrics
        if irqchip and not vmm.vm.backend.irqchip:
            vmm.vm.enable_irqchip()
        vmm.vm.create_vcpus(self.config.vcpus, on_device_error=vmm.record_device_failure, metrics=list(metrics))
        for vcpu in vmm.vcpus:  # each vCPU reads its own code at RIP as it ends (final_state)
            vcpu.read_code = functools.partial(code_at, vmm.vm.memory)
        metrics.attach([vcpu.peripherals for vcpu in vmm.vcpus], [vcpu.backend.kernel_stats() for vcpu in vmm.vcpus])
        return vmm

    @property
    def engine(self) -> str:
        """The engine's name ("kvm", "emulated"): which engine runs this machine."""
        return self.capabilities.name

    @property
    def engine_note(self) -> str:
        """One line on what that engine means for what you see."""
        return self.capabilities.note

    @property
    def _vmm(self) -> Vmm:
        return self._parts.vmm

    @property
    def irqchip(self) -> bool | None:
        """Whether the VM has KVM's in-kernel interrupt controllers (None: not decided yet;
        ``load()`` decides no unless the program programs them (``timer_ticks``), ``boot()``
        yes where the engine has one)."""
        if self.built:
            return self._vmm.vm.backend.irqchip
        return self.config.irqchip

    @property
    def built(self) -> bool:
        """Whether the vCPUs were created (``load()`` or ``boot()`` creates them)."""
        return self._parts.metrics.attached

    @property
    def metrics(self) -> MetricsRegistry:
        """Exit metrics: ``metrics.vcpu(0).exit_mmio_write``, ``metrics.totals()``, ...
        (zeros until the machine runs; KVM's own ``kvm.*`` columns join when ``load()`` or
        ``boot()`` creates the vCPUs whose statistics they are)."""
        return self._parts.metrics

    # --- configuration ---------------------------------------------------------------------------

    @property
    def vcpu_count(self) -> int:
        return self.config.vcpus

    @property
    def memory(self) -> GuestMemory:
        self._require_open("memory")
        return self._vmm.vm.memory

    @property
    def mmio_bus(self):
        return self._vmm.vm.mmio_bus

    @property
    def pio_bus(self):
        return self._vmm.vm.pio_bus

    def add_device(self, device: BusDevice, base: int, size: int | None = None, *, bus: str = "mmio") -> BusEntry:
        """Maps ``device`` at ``base`` on the ``"mmio"`` or ``"pio"`` bus; overlaps are refused.
        A ``Device`` can then raise interrupts at this machine (``device.raise_irq``) and drive
        its interrupt lines (``device.irq_line``, ``device.irqfd``)."""
        self._require_open("add_device()")
        if bus not in ("mmio", "pio"):
            raise ConfigError(f"bus={bus!r}: choose 'mmio' or 'pio'")
        size = size if size is not None else getattr(device, "size", None)
        if size is None:
            raise ConfigError(f"{device!r} has no size attribute; pass size=")
        target = self.mmio_bus if bus == "mmio" else self.pio_bus
        entry = target.insert(device, base, size)
        if isinstance(device, Device):
            self._connect_interrupts(device)
        return entry

    def _connect_interrupts(self, device: Device) -> None:
        """Lets ``device`` raise interrupts, acknowledge them and drive its interrupt lines
        at this machine; through the Vmm, never the Machine, since vCPU threads reach devices
        and must not keep it alive."""
        device.irq_raiser = self._vmm.raise_irq
        device.irq_acknowledger = self._vmm.acknowledge_irq
        device.irq_line_source = self._vmm.irq_line
        device.irqfd_source = self._vmm.irqfd

    def layout(self) -> dict[str, int]:
        """Where this machine's devices are, as the ``.equ`` constants a program is assembled
        with (``MAILBOX``, ``MB_PING``, ``SERIAL``, ``DEBUG_EXIT``, ...). ``load()`` adds
        ``BITS``, ``NVCPUS``, ``RESULTS`` and ``RESULTS_STRIDE``; ``programs.describe_layout()``
        lists all of them with what each is for (README: "Write your own program")."""
        return machine_layout()

    def load(self, program: Program | str | bytes, mode: str = "real", *, address: int = LOAD_ADDRESS) -> LoadedProgram:
        """Loads ``program`` (a bundled ``Program``, assembly text or machine code) for every
        vCPU, in ``mode`` ("real", "protected" or "long"). Only before ``start()``, once.

        Creates the vCPUs, without the in-kernel irqchip unless the machine was created with
        ``irqchip=True`` (the small programs end with HLT, which must reach kvmlab) or the
        program programs the irqchip itself (``Program.irqchip``: ``timer_ticks``)."""
        self._require_unloaded("load()")
        wants_irqchip = isinstance(program, Program) and program.irqchip
        if wants_irqchip:
            self._check_irqchip_for(program)
        elif self.built and self.irqchip and self.config.irqchip is not True:
            raise MachineStateError(
                "load(): this machine's vCPUs were created with KVM's in-kernel irqchip for a boot() that failed, "
                "and a program's HLT would never reach kvmlab with it; make a new Machine for the program"
            )
        if not self.built:
            self._create_vcpus(bool(self.config.irqchip) or wants_irqchip)
        self.program = load_program(self._vmm.vm, program, mode, self.layout(), address)
        self._vmm.notify()  # a Start button may now be enabled
        return self.program

    def _check_irqchip_for(self, program: Program) -> None:
        """Refuses a program that programs the in-kernel irqchip where there can be none."""
        caps = self.capabilities
        what = f"load({program.name})"
        if not caps.irqchip:
            raise caps.refuse(what, "in-kernel interrupt controllers (the PIC, IOAPIC, LAPICs and PIT this program programs)",
                              "use engine='kvm' and irqchip=True")  # fmt: skip
        if self.config.irqchip is False or (self.built and not self.irqchip):
            raise ConfigError(
                f"{what}: the program programs KVM's in-kernel irqchip (PIC, IOAPIC, LAPIC, PIT) and this machine has none "
                "(created with irqchip=False); create the Machine with irqchip=True, or leave irqchip unset"
            )

    def boot(self, kernel, cmdline: str = "", initrd=None) -> BootImage:
        """Loads a Multiboot v1 kernel (an ELF32/ELF64 file, or one whose multiboot header gives
        load addresses) and puts vCPU 0 at its entry; the other vCPUs wait for INIT/SIPI from
        it. ``kernel`` and ``initrd`` are paths (or bytes); the kernel sees ``cmdline`` after its
        own name, as with QEMU. Then ``start()``, and ``wait()`` for its debug-exit code.

        Several vCPUs need KVM's in-kernel irqchip (the LAPICs that deliver INIT and SIPI): a
        machine created with ``irqchip=None`` (the default) gets one here where the engine has one."""
        self._require_unloaded("boot()")
        caps = self.capabilities
        irqchip = caps.irqchip if self.config.irqchip is None else self.config.irqchip
        if self.vcpu_count > 1 and not irqchip:
            why = (f"{caps.label} has none: boot with vcpus=1, or on KVM" if not caps.irqchip
                   else "this machine was created with irqchip=False")  # fmt: skip
            raise ConfigError(f"booting {self.vcpu_count} vCPUs needs KVM's in-kernel irqchip, whose LAPICs deliver INIT/SIPI; {why}")
        if self.built and self.irqchip != irqchip:
            raise ConfigError(
                "boot(): the vCPUs were already created without the in-kernel irqchip (a failed load()?); "
                "create a new Machine, with irqchip=True, and call boot() first"
            )
        request = multiboot_boot.prepare(kernel, cmdline, initrd, memory_size=self.config.memory)
        reserved = IRQCHIP_PAGES if irqchip else ()
        multiboot_boot.check(self._vmm.vm, request, reserved)  # a refusal here leaves no irqchip, no vCPUs
        vmm = self._vmm if self.built else self._create_vcpus(irqchip)
        self.program = multiboot_boot.install(vmm.vm, request, self.fw_cfg, reserved)
        self.kernel = request.image
        vmm.notify()
        return request.image

    # --- stepping (before start, on the calling thread) ------------------------------------------

    def step(self, vcpu: int = 0, *, timeout: float | None = None) -> ExitRecord:
        """Runs one vCPU on *this* thread until its next exit, handles that exit (devices answer,
        metrics count) and returns what KVM reported. Only before ``start()``: stepping is how
        a VMM looks without threads. Raises ``MachineTimeoutError`` if no exit comes within
        ``timeout`` (the machine's timeout by default): a kick ends the run."""
        self._require_phase(Phase.CREATED, "step()")
        if self.program is None:
            raise MachineStateError("step(): nothing is loaded; call load(program, mode=...) first")
        if timeout is not None:
            check_timeout("timeout", timeout)
        target = self._vmm.vcpus[self._index(vcpu)]
        limit = self.timeout if timeout is None else timeout
        with _KickAfter(limit, target), target.backend.stepping():
            try:
                result = target.run_emulation()
            except VcpuError as err:
                return read_exit(target.peripherals, f"error: {err}")
        if result is Emulation.INTERRUPTED:
            raise MachineTimeoutError(f"vCPU {vcpu} made no exit within {limit:g} s (a loop without exits?); it was kicked out of KVM_RUN")
        return read_exit(target.peripherals, outcome_of(result))

    def registers(self, vcpu: int) -> dict[str, int]:
        """A vCPU's general registers while its thread is not running (before ``start()``,
        while stepping, or after the machine stopped)."""
        self._check_registers_readable(vcpu, "registers()")
        return self._vmm.vcpus[vcpu].backend.get_regs().to_dict()

    def _check_registers_readable(self, vcpu: int, what: str) -> None:
        self._index(vcpu)
        if not self.built:
            raise MachineStateError(f"{what}: the vCPUs are created by load() or boot(); call one first")
        if self._vmm.phase is Phase.STARTED:
            raise MachineStateError(f"{what}: the vCPU threads are running; pause a vCPU and use save_state(i)")
        self._require_open(what)

    def special_registers(self, vcpu: int) -> dict:
        """A vCPU's special registers (segments, CR0-CR4, EFER, descriptor tables: what
        ``KVM_GET_SREGS`` returns), under the same rules as ``registers()``."""
        self._check_registers_readable(vcpu, "special_registers()")
        return self._vmm.vcpus[vcpu].backend.get_sregs().to_dict()

    def raise_irq(self, vector: int, vcpu: int = 0) -> None:
        """Raises hardware interrupt ``vector`` (32-255) at vCPU ``vcpu`` of a started machine,
        from any thread; returns at once. Where it goes: the vector's entry in the guest's IVT
        (real mode) or IDT. A device added with ``add_device`` raises through its own
        ``raise_irq(vector, vcpu=0)``. Needs ``capabilities.interrupt_injection`` (KVM).

        Without the in-kernel irqchip the vCPU's own thread injects it (KVM_INTERRUPT) as soon
        as the guest can take it: at once with IF=1, else when it next sets IF (the interrupt
        window). Each raise is delivered exactly once, in the order raised; a vCPU in HLT with
        IF=1 wakes for it. Counted per vCPU: ``interrupts_injected``, ``irq_window_exits``,
        ``hlt_wakeups``.

        With the irqchip (``irqchip=True``, ``boot()``) it is an MSI to the vCPU's LAPIC
        (KVM_SIGNAL_MSI, where ``capabilities.msi``): fixed delivery, edge, to APIC ID
        ``vcpu``. The guest must have software-enabled its LAPIC (bit 8 of the spurious-
        interrupt vector register at 0xFEE000F0; else ``InterruptRefusedError``, and a
        real-mode program cannot) and end each handler with a write of 0 to its EOI register
        (0xFEE000B0). As on hardware, a vector raised again while the LAPIC still holds it
        pending merges with it. Counted in ``msis_sent``; KVM counts the injections
        (``kvm.irq_injections``). For a device's line into the IOAPIC/PIC: ``irq_line``."""
        self._require_open("raise_irq()")
        self._vmm.raise_irq(vector, vcpu)

    def coalesce_mmio(self, target, size: int | None = None, *, register: str | None = None) -> Zone:
        """Coalesces guest writes to a device's plain-storage registers: they go into a ring
        instead of exiting, and reach the device in order at the next exit (of any vCPU),
        before a Pause is answered, before a metrics sample, and at the stop; a read there
        still exits, and sees every earlier write. ``target`` is a device on the MMIO bus
        with ``register`` (one of its ``registers`` names: ``m.coalesce_mmio(m.mailbox,
        register="COUNTER0")``), or an address with ``size``. Allowed while the vCPUs run;
        needs the vCPUs (``load()`` first) and ``capabilities.coalesced_mmio``.

        Refused with the reason: a zero or negative size, a zone over RAM, one that overlaps
        another zone or leaves one device's window, and any register whose write does more
        than store its value (``Device.coalescible``: a doorbell, an acknowledge, a hand-over
        another vCPU polls for). Counted per vCPU (``coalesced_mmio_write``,
        ``coalesced_drains``) and per zone (``metrics.coalesced_zones()``); with
        ``trace=True`` each delivered write is a ``coalesced_mmio_write`` row."""
        return self._coalesce("coalesce_mmio", target, size, register, pio=False)

    def coalesce_pio(self, target, size: int | None = None, *, register: str | None = None) -> Zone:
        """``coalesce_mmio`` for port writes (OUT): a device on the port I/O bus with
        ``register``, or a port with ``size``. Needs ``capabilities.coalesced_pio``
        (``KVM_CAP_COALESCED_PIO``). Counted in ``coalesced_pio_write``, traced as
        ``coalesced_io_out``. None of the standard port devices has a register that may wait."""
        return self._coalesce("coalesce_pio", target, size, register, pio=True)

    def _coalesce(self, what: str, target, size: int | None, register: str | None, *, pio: bool) -> Zone:
        self._require_open(f"{what}()")
        if isinstance(target, int) and not isinstance(target, bool):
            if register is not None:
                raise ConfigError(f"{what}(address, size): a register name goes with a device, not an address")
            if size is None:
                raise ConfigError(f"{what}({target:#x}): give the zone's size in bytes")
            return self._vmm.coalesce(target, size, pio=pio)
        bus = self.pio_bus if pio else self.mmio_bus
        entry = next((e for e in bus.entries if e.device is target), None)
        if entry is None:
            kind = "port I/O" if pio else "MMIO"
            raise ConfigError(f"{what}({target!r}): not a device on this machine's {kind} bus (or pass an address and size)")
        if register is None:
            raise ConfigError(f"{what}({target!r}): name the register to coalesce (register=...)")
        names = {name: offset for offset, name in (getattr(target, "registers", None) or {}).items()}
        if register not in names:
            raise ConfigError(f"{what}(): the {entry.name} has no register {register!r}")
        width = size if size is not None else getattr(target, "register_width", 4)
        return self._vmm.coalesce(entry.base + names[register], width, register=register, pio=pio)

    def uncoalesce_mmio(self, zone: Zone) -> None:
        """Ends ``zone``: its writes exit again, and those still queued reach the device first."""
        self._require_open("uncoalesce_mmio()")
        self._vmm.coalesced.unregister(zone)

    def irq_line(self, gsi: int) -> IrqLine:
        """Input ``gsi`` (0-23) of KVM's in-kernel irqchip, a device's interrupt line: 0-15
        reach both the 8259 PICs and the IOAPIC, 16-23 only the IOAPIC (KVM's default
        routing); what a GSI becomes (vector, vCPU, edge or level) is the guest's programming
        of those controllers. The same ``IrqLine`` each time, from any thread:

        * ``pulse()``: an edge (KVM_IRQ_LINE 1 then 0), for the PIC or an edge-triggered
          IOAPIC entry;
        * ``raise_()`` ... ``lower()``: a level-triggered device holds the line asserted until
          the guest acknowledges it (its handler writes a device register, whose handler calls
          ``lower()``); the IOAPIC delivers again at each EOI while it stays raised, so a line
          never lowered is an interrupt storm, all inside KVM (``kvm.irq_injections``), which
          ``stop()``/``close()`` still end at once.

        ``raise_``/``pulse`` return KVM's answer (KVM_IRQ_LINE_STATUS): above 0 delivered, 0
        coalesced with one pending, below 0 masked. Counted per line (``metrics.irq_lines()``)
        and per machine (``line_*`` metrics). Needs a machine created with ``irqchip=True``
        (or ``boot()``ed); a device gets the same line with ``self.irq_line(gsi)``."""
        self._require_open("irq_line()")
        return self._vmm.irq_line(gsi)

    def irqfd(self, gsi: int, *, level: bool = False) -> IrqFd:
        """An eventfd wired to line ``gsi`` (KVM_IRQFD): its ``trigger()`` raises the line from
        any thread without a vCPU exit (the write itself injects), as virtio backends on their
        own threads do in kvmtool, Firecracker and QEMU. ``level=True`` for a level-triggered
        device (KVM_IRQFD_FLAG_RESAMPLE): the line stays asserted until the guest's EOI, and
        unless the device called ``lower()`` by then (the guest acknowledged it) kvmlab's
        resampler thread triggers it again. One source per GSI (an ``IrqLine`` or one irqfd);
        ``close()`` on it, or on the machine, deassigns it and closes its fds. Needs
        ``irqchip=True``; counted in ``irqfd_triggers``, ``irqfd_resamples``, ``irqfd_retriggers``."""
        self._require_open("irqfd()")
        return self._vmm.irqfd(gsi, level)

    def ioeventfd(self, address: int, size: int = 4, datamatch: int | None = None, handler=None, *, bus: str = "mmio") -> Doorbell:
        """A doorbell (KVM_IOEVENTFD): from now on a guest write of ``size`` bytes to
        ``address`` (a port with ``bus="pio"``), of the value ``datamatch`` if given, reaches no
        device and causes no vCPU exit: it signals an eventfd, and the machine's I/O thread
        (``kvmlab I/O thread``) calls ``handler(count)``, ``count`` being the writes since its
        last call (an eventfd sums them). Any other write to the address exits as before, to
        the device there or to the open bus. Allowed before start and while the vCPUs run; the
        rules, and what is refused, are in ``kvmlab.vstate.doorbells``. A raising handler is
        a device error (``device_errors``) and the thread goes on. Counted per doorbell
        (``metrics.ioeventfds()``) and per machine (``ioeventfd_signals``, ``_wakeups``,
        ``_errors``); ``close()`` on it, or on the machine, deassigns it and serves what is left."""
        self._require_open("ioeventfd()")
        return self._vmm.ioeventfd(address, size, datamatch, handler, bus)

    def tsc_khz(self, vcpu: int = 0) -> int:
        """The frequency of vCPU ``vcpu``'s time stamp counter in kHz, as KVM reports it
        (KVM_GET_TSC_KHZ): what turns the guest's RDTSC counts into time."""
        index = self._index(vcpu)
        if not self.built:
            raise MachineStateError("tsc_khz(): the vCPUs are created by load() or boot(); call one first")
        self._require_open("tsc_khz()")
        return self._vmm.vcpus[index].backend.tsc_khz()

    def pending_interrupts(self, vcpu: int) -> list[int]:
        """The vectors raised at vCPU ``vcpu`` and not injected yet, oldest first: they wait
        for the guest to take them (IF = 1, the interrupt window), or for a paused vCPU to
        resume. A vector KVM has accepted is no longer pending (``interrupts_injected``)."""
        self._require_open("pending_interrupts()")
        return list(self._vmm.vcpus[self._index(vcpu)].irqs.vectors)

    def handle(self, vcpu: int) -> VcpuHandle:
        """The low-level ``VcpuHandle`` of a started vCPU (send_event/recv, as Firecracker's tests do)."""
        self._vmm.require_started("handle()")
        return self._vmm.handles[self._index(vcpu)]

    # --- running ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the vCPU threads (Paused), then resumes them all; returns at once."""
        if self.program is None:
            raise MachineStateError("start(): nothing is loaded; call load(program, mode=...) first")
        self._vmm.start()

    def pause(self, vcpu: int | None = None) -> None:
        """Pauses one vCPU, or every vCPU still running; returns once they answered Paused."""
        self._expect(self._targets(vcpu, "pause"), VcpuEvent.PAUSE, Paused)

    def resume(self, vcpu: int | None = None) -> None:
        """Resumes one vCPU, or every paused one; returns once they answered Resumed."""
        self._expect(self._targets(vcpu, "resume"), VcpuEvent.RESUME, Resumed)

    def save_state(self, vcpu: int) -> VcpuSnapshot:
        """The full state of a *paused* vCPU (registers, MSRs, FPU, XSAVE, LAPIC, events, ...).
        A vCPU that has exited or finished answers no more (Firecracker's rules): its last
        state is ``final_state(vcpu)``."""
        (response,) = self._expect([self._index(vcpu)], VcpuEvent.SAVE_STATE, SavedState)
        return response.state

    def final_state(self, vcpu: int) -> FinalState:
        """The last state of a vCPU that has exited (HLT, a triple fault, an error) or whose
        thread ended (the machine stopped): its registers, the code at RIP, its last exit and,
        when tracing, its last exits. Recorded by the vCPU's own thread as it stopped, as
        plain data: still readable after ``close()``.

        Why a separate call and not ``save_state``: ``save_state`` asks a live vCPU now (it
        must be paused); this is a record of the moment it died, which never changes."""
        index = self._index(vcpu)
        final = self._vmm.final_state(index) if self.built else None
        if final is None:
            state = self.states[index]
            raise MachineStateError(
                f"final_state({index}): vCPU {index} is {state} and has not stopped for good yet; "
                f"pause it and call save_state({index}) for its state now"
            )
        traces = self.metrics.traces
        trace = traces[index] if index < len(traces) else None
        return dataclasses.replace(final, trace=trace.tail(TRACE_TAIL)) if trace is not None else final

    def dump_cpu_config(self, vcpu: int) -> CpuConfiguration:
        """The CPUID entries and MSR values set on a *paused* vCPU."""
        (response,) = self._expect([self._index(vcpu)], VcpuEvent.DUMP_CPU_CONFIG, DumpedCpuConfig)
        return response.config

    def stop(self) -> MachineExit:
        """Finishes every vCPU thread and joins them (the VMM side of the teardown table)."""
        self._require_open("stop()")
        return self._vmm.stop()

    def wait(self, timeout: float | None = None) -> MachineExit:
        """Waits until the guest stops by itself; returns the exit code (an int with
        ``vcpu_codes`` and ``reason``). Raises ``MachineTimeoutError`` if it is still running."""
        self._require_open("wait()")
        if timeout is not None:
            check_timeout("wait(timeout)", timeout, zero=True)
        result = self._vmm.wait(timeout)
        if result is None:
            raise MachineTimeoutError(
                f"the machine is still running after {timeout:g} s (states: {self.states}); "
                "call stop() to end it, or wait longer"
            )
        return result

    def close(self) -> None:
        """Stops the machine if needed, joins every thread and releases every fd. Idempotent.

        If a vCPU thread cannot be stopped (a device handler that blocks), this raises and
        keeps everything it could not release; a later ``close()`` finishes the job once
        the handler returns. (The finalizer is only detached after a close that succeeded:
        calling it would mark it done even when closing raised.)"""
        self._parts.close()
        self._finalizer.detach()

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- observing --------------------------------------------------------------------------------

    @property
    def states(self) -> list[VcpuStatus]:
        if not self.built:
            return [VcpuStatus(i, VcpuState.CREATED) for i in range(self.vcpu_count)]
        return self._vmm.statuses()

    @property
    def exit(self) -> MachineExit | None:
        """The exit code once the machine stopped, else None."""
        return self._vmm.exit

    @property
    def closed(self) -> bool:
        return self._parts.closed

    @property
    def phase(self) -> str:
        """"created", "started", "stopped" or "closed"."""
        return self._vmm.phase.value

    def watch(self, callback: Callable[[int | None], None]) -> Callable[[], None]:
        """Calls ``callback(index)`` after vCPU ``index`` changes state (Paused, Running,
        Exited, Finished) and ``callback(None)`` after the machine starts, stops, closes or is
        loaded; returns the function that stops it. What views of the machine (``kvmlab.lab``)
        follow instead of polling ``states``.

        The callback runs on the thread that made the change, a vCPU thread included: it must
        return at once, and must hold no strong reference to this Machine (the vCPU threads
        reach it, and a dropped Machine must still be finalized); errors are logged. KVM's MP
        state (``states[i].mp_state``) changes inside KVM_RUN without a transition: poll it."""
        return self._vmm.watch(callback)

    @property
    def device_errors(self) -> list[DeviceFailure]:
        """Device handlers that raised (newest last, the last 1000), with tracebacks."""
        return list(self._vmm.device_failures)

    def results(self, vcpu: int | None = None) -> dict[str, int] | list[dict[str, int]]:
        """What a bundled program counted (its results area), for one vCPU or all."""
        if self.program is None:
            raise MachineStateError("results(): nothing is loaded")
        if self.closed:
            raise MachineStateError("results(): the machine is closed and its memory released")
        if vcpu is None:
            return [read_results(self._vmm.vm, self.program, i) for i in range(self.vcpu_count)]
        return read_results(self._vmm.vm, self.program, self._index(vcpu))

    def __repr__(self) -> str:
        program = self.program.program.name if self.program else "nothing loaded"
        return f"<Machine {self.vcpu_count} vCPU, {self.config.memory:#x} bytes, engine {self.engine}, {program}, {self.phase}>"

    # --- helpers ----------------------------------------------------------------------------------

    def _index(self, vcpu) -> int:
        if not is_whole_number(vcpu) or not 0 <= vcpu < self.vcpu_count:
            raise ConfigError(f"vcpu={vcpu!r}: this machine has vCPUs 0 to {self.vcpu_count - 1}")
        return vcpu

    def _targets(self, vcpu: int | None, what: str) -> list[int]:
        if vcpu is not None:
            return [self._index(vcpu)]
        self._vmm.require_started(f"{what}()")
        live = [s.index for s in self.states if s.state in (VcpuState.PAUSED, VcpuState.RUNNING)]
        if not live:
            raise VcpuExitedError(f"{what}(): every vCPU has exited ({self.states}); nothing to {what}")
        return live

    def _expect(self, indices: Iterable[int], event: VcpuEvent, expected: type):
        responses = self._vmm.request(list(indices), event)
        for index, response in zip(indices, responses):
            if isinstance(response, expected):
                continue
            if isinstance(response, NotAllowed):
                raise VcpuNotAllowedError(f"vCPU {index}: {event.value} not allowed: {response.reason}; pause it first")
            if isinstance(response, Exited):
                raise VcpuExitedError(
                    f"vCPU {index} has exited with code {response.code} ({response.reason}); it cannot take {event.value}"
                    f" (its last state is kept: final_state({index}))"
                )
            if isinstance(response, Error):
                raise VcpuResponseError(f"vCPU {index}: {event.value} failed: {response.error}") from response.error
            raise VcpuResponseError(f"vCPU {index}: unexpected answer {response!r} to {event.value}")
        return responses

    def _require_unloaded(self, what: str) -> None:
        self._require_phase(Phase.CREATED, what)
        if self.program is not None:
            raise MachineStateError(f"{what}: this machine is already loaded with {self.program.program.name}; make a new Machine")

    def _require_phase(self, phase: Phase, what: str) -> None:
        if self.closed:
            raise MachineStateError(f"{what}: the machine is closed")
        if self._vmm.phase is not phase:
            raise MachineStateError(f"{what}: only while the machine is {phase.value}; it is {self._vmm.phase.value}")

    def _require_open(self, what: str) -> None:
        if self.closed:
            raise MachineStateError(f"{what}: the machine is closed")
