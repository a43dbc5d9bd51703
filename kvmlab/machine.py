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

import functools
import math
import threading
import weakref
from typing import Callable, Iterable

from .devices import COM1, DEBUG_EXIT_PORT, MAILBOX_BASE, Console, DebugExit, Mailbox, Serial16550
from .devices.fw_cfg import FW_CFG_PORT, FwCfg
from .devices.pci_host import PCI_CONFIG_PORT, PciHost
from .devices import mailbox as mailbox_regs
from .engines import note as engine_note
from .engines import open_engine
from .engines.cpuid import validate_mask
from .errors import (
    ConfigError,
    MachineStateError,
    MachineTimeoutError,
    VcpuError,
    VcpuExitedError,
    VcpuNotAllowedError,
    VcpuResponseError,
)
from .guest.loader import LoadedProgram, load_program, read_results
from .guest.modes import LOAD_ADDRESS, Mode, setup_multiboot_entry
from .guest import multiboot
from .guest.multiboot import BootImage
from .guest.programs import Program
from .metrics import MetricsRegistry
from .metrics.registry import DEFAULT_HISTORY_S, DEFAULT_SAMPLE_HZ
from .metrics.trace import DEFAULT_CAPACITY as DEFAULT_TRACE_CAPACITY
from .vmm import MachineExit, Phase, Vmm
from .vstate.bus import BusDevice, BusEntry
from .vstate.cpu_state import CpuConfiguration, VcpuSnapshot
from .vstate.exit_record import ExitRecord, outcome_of, read_exit
from .vstate.exits import DeviceFailure, Emulation
from .vstate.vcpu import VcpuHandle
from .vstate.kick import install_kick_handler
from .vstate.layout import IRQCHIP_PAGES, MIB
from .vstate.memory import GuestMemory, validate_memory_size
from .vstate.protocol import DumpedCpuConfig, Error, Exited, NotAllowed, Paused, Resumed, SavedState, VcpuEvent, VcpuState, VcpuStatus
from .vstate.vm import Vm


def _is_finite_number(value) -> bool:
    """An int or float that is neither a bool, NaN nor infinite (NaN slips through every
    comparison, and infinity only fails later, deep inside a sleep or an allocation)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_timeout(name: str, value, *, zero: bool = False) -> None:
    """A timeout is a finite number of seconds, positive (or also 0 where ``zero``), and at
    most ``threading.TIMEOUT_MAX`` (the longest wait the platform's locks can do; a longer
    one raises OverflowError deep inside a wait)."""
    if not _is_finite_number(value) or value < 0 or (value == 0 and not zero) or value > threading.TIMEOUT_MAX:
        least = "0 or more" if zero else "more than 0"
        raise ConfigError(f"{name}={value!r}: need a finite number of seconds, {least}, at most {threading.TIMEOUT_MAX:.0f}")


class _Parts:
    """What a Machine owns, apart from the Machine itself: its finalizer closes this (so a
    dropped Machine releases its file descriptors), and no thread holds the Machine."""

    def __init__(self, engine):
        self.engine = engine  # until the VM is built
        self.vmm: Vmm | None = None
        self.metrics: MetricsRegistry | None = None
        self.closed = False

    def close(self) -> None:
        if self.vmm is not None:
            self.vmm.close()
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.closed = True


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
    controllers (then HLT no longer exits to user space; the small programs want it off).

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
        if not isinstance(vcpus, int) or isinstance(vcpus, bool) or vcpus < 1:
            raise ConfigError(f"vcpus={vcpus!r}: need a whole number of at least 1")
        if not _is_finite_number(memory_mib) or memory_mib <= 0:
            raise ConfigError(f"memory_mib={memory_mib!r}: need a positive, finite number of MiB")
        memory_bytes = memory_mib * MIB
        if memory_bytes != int(memory_bytes):
            raise ConfigError(f"memory_mib={memory_mib!r} is not a whole number of bytes, let alone 4 KiB pages")
        validate_memory_size(int(memory_bytes))
        _check_timeout("timeout", timeout)
        if isinstance(sample_hz, bool) or not isinstance(sample_hz, (int, float)) or not 0 <= sample_hz <= 1000:
            raise ConfigError(f"sample_hz={sample_hz!r}: need 0 (no sampler) to 1000 samples a second")
        if not _is_finite_number(history_s) or history_s <= 0 or (sample_hz and history_s * sample_hz < 1):
            raise ConfigError(f"history_s={history_s!r}: need a finite number of seconds with room for at least one sample at {sample_hz} Hz")
        if isinstance(trace_capacity, bool) or not isinstance(trace_capacity, int) or trace_capacity < 1:
            raise ConfigError(f"trace_capacity={trace_capacity!r}: need a positive number of rows")
        if irqchip not in (None, True, False):
            raise ConfigError(f"irqchip={irqchip!r}: True, False, or None (off for programs, on for boot())")
        if not isinstance(strict, bool):
            raise ConfigError(f"strict={strict!r}: True or False")
        cpuid_mask = validate_mask(cpuid_mask)
        install_kick_handler()
        self.timeout = float(timeout)
        engine_impl = open_engine(engine, kvm_path)
        limit = engine_impl.max_vcpus()
        if vcpus > limit:
            engine_impl.close()
            raise ConfigError(f"vcpus={vcpus!r}: need a whole number from 1 to {limit} ({engine_impl.name.upper() if engine_impl.name == 'kvm' else 'the emulated engine'}'s maximum)")
        try:
            engine_impl.check_config(irqchip=bool(irqchip), cpuid_mask=cpuid_mask)
        except BaseException:
            engine_impl.close()
            raise
        #: "kvm" or "emulated": which engine runs this machine
        self.engine = engine_impl.name
        #: one line on what that engine means for what you see
        self.engine_note = engine_note(self.engine)
        self._parts = parts = _Parts(engine_impl)
        self._finalizer = weakref.finalize(self, parts.close)
        self._config = dict(
            vcpus=vcpus, memory=int(memory_bytes), irqchip=irqchip, cpuid_mask=cpuid_mask,
            sample_hz=sample_hz, history_s=history_s, trace=trace, trace_capacity=trace_capacity, strict=strict,
        )  # fmt: skip
        # The devices exist from the start; they join the buses when the VM is built.
        self.console = Console()
        self.serial = Serial16550(self.console)
        self.debug_exit = DebugExit()
        self.mailbox = Mailbox()
        self.fw_cfg = FwCfg(int(memory_bytes), vcpus)
        self.pci_host = PciHost()
        self.program: LoadedProgram | None = None
        self.kernel: BootImage | None = None

    def _build(self, irqchip: bool) -> Vmm:
        """Creates the VM, its vCPUs and devices and the metrics registry (once). Deferred to
        first need so that ``boot()`` can still choose the in-kernel irqchip, which KVM only
        allows before the first vCPU exists."""
        parts = self._parts
        if parts.vmm is not None:
            return parts.vmm
        if parts.closed:
            raise MachineStateError("the machine is closed")
        config = self._config
        backend = parts.engine.create_vm(irqchip=irqchip, cpuid_mask=config["cpuid_mask"])
        try:
            vm = Vm(backend, config["memory"], strict=config["strict"])
        except BaseException:
            backend.close()
            raise
        parts.engine.close()
        parts.engine = None
        parts.vmm = vmm = Vmm(vm, self.timeout)
        vm.create_vcpus(config["vcpus"], on_device_error=vmm.record_device_failure)
        vm.pio_bus.insert(self.serial, COM1, self.serial.size)
        vm.pio_bus.insert(self.debug_exit, DEBUG_EXIT_PORT, self.debug_exit.size)
        vm.pio_bus.insert(self.fw_cfg, FW_CFG_PORT, self.fw_cfg.size)
        vm.pio_bus.insert(self.pci_host, PCI_CONFIG_PORT, self.pci_host.size)
        vm.mmio_bus.insert(self.mailbox, MAILBOX_BASE, self.mailbox.size)
        parts.metrics = MetricsRegistry(
            [vcpu.peripherals for vcpu in vm.vcpus],
            [vcpu.backend.kernel_stats() for vcpu in vm.vcpus],
            sample_hz=config["sample_hz"],
            history_s=config["history_s"],
            # not a bound method: nothing the threads reach may hold the Machine itself
            describe_address=functools.partial(_describe_address, vm.mmio_bus, vm.pio_bus),
        )
        if config["trace"]:
            parts.metrics.enable_trace(config["trace_capacity"])
        vmm.on_start.append(parts.metrics.start)
        vmm.on_stop.append(lambda _exit, registry=parts.metrics: registry.stop())
        return vmm

    @property
    def _vmm(self) -> Vmm:
        return self._parts.vmm or self._build(bool(self._config["irqchip"]))

    @property
    def irqchip(self) -> bool | None:
        """Whether the VM has KVM's in-kernel interrupt controllers (None: not decided yet)."""
        vmm = self._parts.vmm
        return vmm.vm.backend.irqchip if vmm is not None else self._config["irqchip"]

    @property
    def built(self) -> bool:
        """Whether the VM exists yet (it is created on first use)."""
        return self._parts.vmm is not None

    @property
    def metrics(self) -> MetricsRegistry:
        """Exit metrics: ``metrics.vcpu(0).exit_mmio_write``, ``metrics.totals()``, ..."""
        self._vmm
        return self._parts.metrics

    # --- configuration ---------------------------------------------------------------------------

    @property
    def vcpu_count(self) -> int:
        return self._config["vcpus"]

    @property
    def memory(self) -> GuestMemory:
        return self._vmm.vm.memory

    @property
    def mmio_bus(self):
        return self._vmm.vm.mmio_bus

    @property
    def pio_bus(self):
        return self._vmm.vm.pio_bus

    def add_device(self, device: BusDevice, base: int, size: int | None = None, *, bus: str = "mmio") -> BusEntry:
        """Maps ``device`` at ``base`` on the ``"mmio"`` or ``"pio"`` bus; overlaps are refused."""
        self._require_open("add_device()")
        if bus not in ("mmio", "pio"):
            raise ConfigError(f"bus={bus!r}: choose 'mmio' or 'pio'")
        size = size if size is not None else getattr(device, "size", None)
        if size is None:
            raise ConfigError(f"{device!r} has no size attribute; pass size=")
        target = self.mmio_bus if bus == "mmio" else self.pio_bus
        return target.insert(device, base, size)

    def layout(self) -> dict[str, int]:
        """The constants a program is assembled with (``.equ`` names)."""
        return {
            "MAILBOX": MAILBOX_BASE,
            "MB_ID": mailbox_regs.ID,
            "MB_PING": mailbox_regs.PING,
            "MB_PONG": mailbox_regs.PONG,
            "MB_COUNTERS": mailbox_regs.COUNTERS,
            "SERIAL": COM1,
            "DEBUG_EXIT": DEBUG_EXIT_PORT,
        }

    def load(self, program: Program | str | bytes, mode: str = "real", *, address: int = LOAD_ADDRESS) -> LoadedProgram:
        """Loads ``program`` (a bundled ``Program``, assembly text or machine code) for every
        vCPU, in ``mode`` ("real", "protected" or "long"). Only before ``start()``."""
        self._require_phase(Phase.CREATED, "load()")
        self.program = load_program(self._vmm.vm, program, mode, self.layout(), address)
        self._vmm.notify()  # a Start button may now be enabled
        return self.program

    def boot(self, kernel, cmdline: str = "", initrd=None) -> BootImage:
        """Loads a Multiboot v1 kernel (an ELF32/ELF64 file, or one whose multiboot header gives
        load addresses) and puts vCPU 0 at its entry; the other vCPUs wait for INIT/SIPI from
        it. ``kernel`` and ``initrd`` are paths (or bytes); the kernel sees ``cmdline`` after its
        own name, as with QEMU. Then ``start()``, and ``wait()`` for its debug-exit code.

        Several vCPUs need KVM's in-kernel irqchip (the LAPICs that deliver INIT and SIPI): a
        machine created with ``irqchip=None`` (the default) gets one here."""
        self._require_phase(Phase.CREATED, "boot()") if self.built else self._require_open("boot()")
        if self.program is not None:
            raise MachineStateError("boot(): this machine is already loaded; make a new Machine")
        if not isinstance(cmdline, str):
            raise ConfigError(f"cmdline={cmdline!r}: need text")
        wanted = self._config["irqchip"]
        irqchip = (self.engine == "kvm") if wanted is None else wanted
        if self.vcpu_count > 1 and not irqchip:
            why = ("the emulated engine has none: boot with vcpus=1, or on KVM" if self.engine == "emulated"
                   else "this machine was created with irqchip=False")  # fmt: skip
            raise ConfigError(f"booting {self.vcpu_count} vCPUs needs KVM's in-kernel irqchip, whose LAPICs deliver INIT/SIPI; {why}")
        if self.built and self.irqchip != irqchip:
            raise ConfigError(
                "boot(): the VM was already built without the in-kernel irqchip (add_device() or memory use builds it); "
                "create the Machine with irqchip=True, or call boot() first"
            )
        data, name = self._boot_input(kernel, "kernel")
        modules = []
        if initrd is not None:
            module, module_name = self._boot_input(initrd, "initrd")
            modules.append((module_name, module))
        image = multiboot.plan(data, name, modules)
        vmm = self._build(irqchip)
        extra = list(IRQCHIP_PAGES) if irqchip else []
        info = multiboot.write(vmm.vm.memory, image, f"{name} {cmdline}".strip(), extra)
        kernel_range = image.kernel_range
        initrd_range = (image.modules[0][0], len(image.modules[0][1])) if image.modules else None
        self.fw_cfg.set_cmdline(cmdline)
        self.fw_cfg.set_kernel(kernel_range.start, kernel_range.size, image.entry, initrd_range)
        setup_multiboot_entry(vmm.vcpus[0].backend, vmm.vm.memory, image.entry, info, info + multiboot.GDT_OFFSET)
        self.kernel = image
        self.program = LoadedProgram(Program(name, ""), Mode.PROTECTED, kernel_range.start, bytes(image.chunks[0][1]))
        vmm.notify()
        return image

    def _boot_input(self, source, what: str) -> tuple[bytes, str]:
        """``source`` (bytes, or the path of a file no bigger than guest memory) and its name.
        Read before the VM is built: a bad file costs no VM."""
        if isinstance(source, (bytes, bytearray)):
            return bytes(source), what
        return multiboot.read_input(source, what, self._config["memory"])

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
            _check_timeout("timeout", timeout)
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
        index = self._index(vcpu)
        if self._vmm.phase is Phase.STARTED:
            raise MachineStateError("registers(): the vCPU threads are running; pause a vCPU and use save_state(i)")
        self._require_open("registers()")
        return self._vmm.vcpus[index].backend.get_regs().to_dict()

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
        """The full state of a *paused* vCPU (registers, MSRs, FPU, XSAVE, LAPIC, events, ...)."""
        (response,) = self._expect([self._index(vcpu)], VcpuEvent.SAVE_STATE, SavedState)
        return response.state

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
            _check_timeout("wait(timeout)", timeout, zero=True)
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
        if self._parts.vmm is None:
            return [VcpuStatus(i, VcpuState.CREATED) for i in range(self.vcpu_count)]
        return self._parts.vmm.statuses()

    @property
    def exit(self) -> MachineExit | None:
        """The exit code once the machine stopped, else None."""
        return self._parts.vmm.exit if self._parts.vmm is not None else None

    @property
    def closed(self) -> bool:
        vmm = self._parts.vmm
        return self._parts.closed if vmm is None else vmm.phase is Phase.CLOSED

    @property
    def phase(self) -> str:
        if self._parts.vmm is None:
            return "closed" if self._parts.closed else Phase.CREATED.value
        return self._parts.vmm.phase.value

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
        return f"<Machine {self.vcpu_count} vCPU, {self._config['memory']:#x} bytes, engine {self.engine}, {program}, {self.phase}>"

    # --- helpers ----------------------------------------------------------------------------------

    def _index(self, vcpu) -> int:
        if not isinstance(vcpu, int) or isinstance(vcpu, bool) or not 0 <= vcpu < self.vcpu_count:
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
                )
            if isinstance(response, Error):
                raise VcpuResponseError(f"vCPU {index}: {event.value} failed: {response.error}") from response.error
            raise VcpuResponseError(f"vCPU {index}: unexpected answer {response!r} to {event.value}")
        return responses

    def _require_phase(self, phase: Phase, what: str) -> None:
        if self.closed:
            raise MachineStateError(f"{what}: the machine is closed")
        if self._vmm.phase is not phase:
            raise MachineStateError(f"{what}: only while the machine is {phase.value}; it is {self._vmm.phase.value}")

    def _require_open(self, what: str) -> None:
        if self.closed:
            raise MachineStateError(f"{what}: the machine is closed")
