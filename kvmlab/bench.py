"""Measurements of kvmlab's exit path against baselines run in the same process and moment.

The machines are noisy (nested KVM, two shared cores), so every figure is a *ratio* to a
baseline measured alongside it: variants are interleaved round by round and the median of the
rounds is reported. Used by ``kvmlab bench`` and the scripts in ``benchmarks/``.

The throughput guest is the real-mode ``mmio_counter`` (an MMIO write per iteration, a read
every 8th), the same bytes for every variant; ``exit_cycles`` uses ``exit_cost`` (the guest
times each port-I/O exit with RDTSC):

* ``c``: ``benchmarks/exit_loop.c``, a minimal C VMM (compiled with gcc on first use),
* ``bare``: the smallest Python loop around ctypes ``KVM_RUN`` (the floor for any Python VMM),
* ``kvmlab``: a ``Machine`` with metrics on (the default), with the exit trace on, or with
  the sampler off.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .guest import programs
from .machine import Machine
from .errors import BenchmarkError
from .guest.modes import LOAD_ADDRESS

C_SOURCE = Path(__file__).resolve().parents[1] / "benchmarks" / "exit_loop.c"
READ_EVERY = 8


def exits_for(iterations: int) -> int:
    """MMIO exits + the HLT that one vCPU running mmio_counter(iterations) takes."""
    return iterations + iterations // READ_EVERY + 1


def guest_program(iterations: int) -> programs.Program:
    return programs.mmio_counter(iterations=iterations, read_every=READ_EVERY)


def guest_bytes(iterations: int) -> bytes:
    return program_bytes(guest_program(iterations))


def program_bytes(program: programs.Program) -> bytes:
    """The real-mode machine code of ``program``, as kvmlab loads it (for the C loop)."""
    with Machine(vcpus=1, sample_hz=0) as m:
        return m.load(program, mode="real").code


@dataclass
class CRun:
    exits: int
    seconds: float
    results: list[tuple[int, int, int, int]]  # each vCPU's four result dwords

    @property
    def exits_per_second(self) -> float:
        return self.exits / self.seconds


class CReference:
    """``benchmarks/exit_loop.c``, compiled once into a temporary folder, with a real-mode
    guest: ``mmio_counter(iterations)`` when ``iterations`` is given, else ``guest``."""

    def __init__(self, iterations: int | None = None, *, guest: bytes | None = None):
        if shutil.which("gcc") is None:
            raise BenchmarkError("gcc is not installed: the C reference cannot be built")
        if not C_SOURCE.exists():
            raise BenchmarkError(f"{C_SOURCE} is missing: the C reference needs a source checkout of kvmlab")
        self._dir = tempfile.mkdtemp(prefix="kvmlab-bench-")
        self.binary = os.path.join(self._dir, "exit_loop")
        subprocess.run(["gcc", "-O2", "-o", self.binary, str(C_SOURCE), "-lpthread"], check=True, capture_output=True)
        self.guest = os.path.join(self._dir, "guest.bin")
        Path(self.guest).write_bytes(guest if guest is not None else guest_bytes(iterations))

    def run(self, vcpus: int) -> float:
        return self.run_full(vcpus).exits_per_second

    def run_full(self, vcpus: int) -> CRun:
        lines = subprocess.run([self.binary, self.guest, str(vcpus)], capture_output=True, text=True, check=True, timeout=300).stdout.splitlines()
        head = lines[0].split()
        results = [tuple(int(v) for v in line.split()[2:6]) for line in lines[1:] if line.startswith("results ")]
        return CRun(int(head[1]), float(head[3]), results)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "CReference":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def kvmlab_run(iterations: int, vcpus: int = 1, *, trace: bool = False, sample_hz: float = 10.0, engine: str = "kvm") -> float:
    """Exits per second of a Machine running the guest to its end."""
    with Machine(vcpus=vcpus, memory_mib=1, trace=trace, trace_capacity=max(exits_for(iterations), 1), sample_hz=sample_hz, engine=engine) as m:
        m.load(guest_program(iterations), mode="real")
        started = time.perf_counter()
        m.start()
        code = m.wait(600)
        elapsed = time.perf_counter() - started
        if code != 0:
            raise BenchmarkError(f"benchmark guest failed: {code!r}")
        exits = sum(mt.exit_mmio_read + mt.exit_mmio_write + mt.exit_hlt for mt in m.metrics)
    return exits / elapsed


def bare_ctypes_run(iterations: int, vcpus: int = 1) -> float:
    """The least a Python VMM can do per exit: ctypes KVM_RUN, read kvm_run, store/load a
    register, one thread per vCPU. No state machine, metrics or devices."""
    import threading

    from .kvm import Kvm
    from .kvm.constants import KVM_RUN
    from .kvm import run as kr
    from .kvm.syscall import kvm_run_ioctl

    code = guest_bytes(iterations)
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.set_tss_addr(0xFFFBD000)
    memory = mmap.mmap(-1, 0xA0000)
    anchor = ctypes.c_char.from_buffer(memory)
    vm.set_user_memory_region(0, 0, 0xA0000, ctypes.addressof(anchor))
    del anchor
    memory[LOAD_ADDRESS : LOAD_ADDRESS + len(code)] = code
    cpus = []
    for index in range(vcpus):
        cpu = vm.create_vcpu(index, kvm.get_vcpu_mmap_size())
        sregs = cpu.get_sregs()
        for name in ("cs", "ds", "es", "fs", "gs"):
            segment = getattr(sregs, name)
            segment.base, segment.selector = 0, 0
        stack = (0xA0000 - (index + 1) * 0x1000) >> 4
        sregs.ss.base, sregs.ss.selector = stack << 4, stack
        cpu.set_sregs(sregs)
        regs = cpu.get_regs()
        regs.rip, regs.rflags, regs.rsp, regs.rdi = LOAD_ADDRESS, 2, 0x1000, index
        cpu.set_regs(regs)
        cpus.append(cpu)
    registers = bytearray(0x1000)
    counts = [0] * vcpus

    def loop(index: int) -> None:
        cpu = cpus[index]
        u8, u32, u64, fd = cpu.run_u8, cpu.run_u32, cpu.run_u64, cpu.fd
        reason_at, addr_at, len_at, write_at, data_at = (
            kr.EXIT_REASON_U32, kr.MMIO_PHYS_ADDR_U64, kr.MMIO_LEN_U32, kr.MMIO_IS_WRITE_U8, kr.MMIO_DATA_U8)  # fmt: skip
        exit_mmio, exit_hlt = kr.EXIT_MMIO, kr.EXIT_HLT
        exits = 0
        while True:
            if kvm_run_ioctl(fd, KVM_RUN, 0) < 0:
                continue
            exits += 1
            reason = u32[reason_at]
            if reason == exit_mmio:
                offset, length = u64[addr_at] - 0xA0000, u32[len_at]
                if u8[write_at]:
                    registers[offset : offset + length] = u8[data_at : data_at + length]
                else:
                    u8[data_at : data_at + length] = registers[offset : offset + length]
            elif reason == exit_hlt:
                counts[index] = exits
                return

    threads = [threading.Thread(target=loop, args=(i,), name=f"kvmlab bench bare {i}") for i in range(vcpus)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    for cpu in cpus:
        cpu.close()
    vm.close()
    kvm.close()
    memory.close()
    return sum(counts) / elapsed


@dataclass
class Rounds:
    """Interleaved measurements: ``values[variant]`` holds one figure per round."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, variant: str, value: float) -> None:
        self.values.setdefault(variant, []).append(value)

    def median(self, variant: str) -> float:
        return statistics.median(self.values[variant])

    def ratio(self, variant: str, baseline: str) -> float:
        """Median of the per-round ratios: each round's pair was measured back to back."""
        return statistics.median(v / b for v, b in zip(self.values[variant], self.values[baseline]))


def throughput(iterations: int = 200_000, rounds: int = 5, *, with_c: bool = True, vcpus: int = 1, progress=None) -> Rounds:
    """Every variant, ``rounds`` times, interleaved."""
    result = Rounds()
    with CReference(iterations) if with_c else contextlib.nullcontext() as reference:
        for round_number in range(rounds):
            if reference is not None:
                result.add("c", reference.run(vcpus))
            result.add("kvmlab", kvmlab_run(iterations, vcpus))
            result.add("kvmlab_trace", kvmlab_run(iterations, vcpus, trace=True))
            result.add("kvmlab_no_sampler", kvmlab_run(iterations, vcpus, sample_hz=0))
            result.add("bare", bare_ctypes_run(iterations, vcpus))
            if progress:
                progress(round_number + 1, rounds)
    return result


def scaling(iterations: int = 200_000, rounds: int = 5, *, with_c: bool = True, progress=None) -> Rounds:
    """1 vCPU against 2 vCPUs for kvmlab, the bare loop and C (each vCPU runs the guest)."""
    result = Rounds()
    with CReference(iterations) if with_c else contextlib.nullcontext() as reference:
        for round_number in range(rounds):
            for vcpus in (1, 2):
                if reference is not None:
                    result.add(f"c_{vcpus}", reference.run(vcpus))
                result.add(f"kvmlab_{vcpus}", kvmlab_run(iterations, vcpus))
                result.add(f"bare_{vcpus}", bare_ctypes_run(iterations, vcpus))
            if progress:
                progress(round_number + 1, rounds)
    return result


def engines(iterations: int = 100_000, rounds: int = 5, progress=None) -> Rounds:
    """The same guest on the KVM engine and on the emulated engine, 1 and 2 vCPUs."""
    result = Rounds()
    for round_number in range(rounds):
        for vcpus in (1, 2):
            result.add(f"kvm_{vcpus}", kvmlab_run(iterations, vcpus, engine="kvm"))
            result.add(f"emulated_{vcpus}", kvmlab_run(iterations, vcpus, engine="emulated"))
        if progress:
            progress(round_number + 1, rounds)
    return result


def cycles_per_exit(results: tuple[int, int, int, int] | dict) -> tuple[float, int]:
    """(mean, fewest) cycles per exit from ``exit_cost``'s results area."""
    if isinstance(results, dict):
        results = (results["cycles_low"], results["cycles_high"], results["min_cycles"], results["exits"])
    low, high, fewest, exits = results
    if exits == 0:
        raise BenchmarkError("the exit_cost guest timed no exit")
    return ((high << 32) | low) / exits, fewest


def exit_cycles(iterations: int = 20_000, rounds: int = 5, *, progress=None) -> Rounds:
    """Cycles per port-I/O exit as the guest measures them (``exit_cost``, real mode, 1 vCPU):
    kvmlab against the C loop, interleaved. Variants ``<name>_mean`` and ``<name>_min``."""
    program = programs.exit_cost(iterations)
    result = Rounds()
    with CReference(guest=program_bytes(program)) as reference:
        for round_number in range(rounds):
            mean, fewest = cycles_per_exit(reference.run_full(1).results[0])
            result.add("c_mean", mean)
            result.add("c_min", fewest)
            with Machine(vcpus=1, memory_mib=1, engine="kvm") as m:
                m.load(program, mode="real")
                m.start()
                code = m.wait(600)
                if code != 0:
                    raise BenchmarkError(f"benchmark guest failed: {code!r}")
                mean, fewest = cycles_per_exit(m.results(0))
            result.add("kvmlab_mean", mean)
            result.add("kvmlab_min", fewest)
            if progress:
                progress(round_number + 1, rounds)
    return result


def kick_latency(vcpus: int = 4, cycles: int = 200, engine: str = "kvm") -> list[float]:
    """Seconds from asking every vCPU to pause until all answered Paused, with every vCPU
    in a loop that never exits by itself (so each Pause needs a kick)."""
    latencies = []
    with Machine(vcpus=vcpus, memory_mib=1, engine=engine) as m:
        m.load(programs.busy_loop(), mode="protected")
        m.start()
        for _ in range(cycles):
            time.sleep(0.002)  # let every vCPU get back into KVM_RUN
            started = time.perf_counter()
            m.pause()
            latencies.append(time.perf_counter() - started)
            m.resume()
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


@dataclass
class PingPongRun:
    """One ping-pong run to its end: how fast, how much host CPU, how many exits."""

    rounds: int
    seconds: float
    cpu_seconds: float  # user + system time of this process (the vCPU threads included)
    exits: int
    latencies_us: list[float]

    @property
    def rounds_per_s(self) -> float:
        return self.rounds / self.seconds

    @property
    def cpu_ms_per_1000_rounds(self) -> float:
        return self.cpu_seconds * 1e6 / self.rounds

    @property
    def exits_per_round(self) -> float:
        return self.exits / self.rounds


def _cpu_seconds() -> float:
    """This process's CPU time, every thread's, user and system (CLOCK_PROCESS_CPUTIME_ID:
    nanoseconds, where ``os.times`` counts 10 ms ticks)."""
    return time.process_time()


def pingpong_run(kind: str, rounds: int, *, engine: str = "kvm", mode: str = "protected") -> PingPongRun:
    """``mailbox_pingpong`` (``kind="polling"``) or ``mailbox_irq`` (``"interrupts"``) on two
    vCPUs, to its end; the sampler off, so only the guest and its exits cost CPU."""
    program = programs.mailbox_pingpong(rounds) if kind == "polling" else programs.mailbox_irq(rounds)
    with Machine(vcpus=2, memory_mib=2, engine=engine, sample_hz=0) as m:
        m.load(program, mode=mode)
        cpu, started = _cpu_seconds(), time.perf_counter()
        m.start()
        code = m.wait(600)
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        if code != 0:
            raise BenchmarkError(f"benchmark guest {program.name} failed: {m.exit!r}")
        done = m.results(0)["rounds"]
        exits = sum(sum(m.metrics.vcpu(i).counters()[c] for c in ("exit_mmio_read", "exit_mmio_write", "exit_hlt")) for i in range(2))
        latencies = list(m.metrics.interrupt_latencies()["latency_us"])
    return PingPongRun(done, seconds, cpu, exits, latencies)


def interrupt_pingpong(rounds: int = 2_000, repeats: int = 5, *, engines: tuple[str, ...] = ("kvm", "emulated"), progress=None):
    """Polling against interrupt-driven ping-pong on each engine, interleaved ``repeats``
    times. Returns (``Rounds`` with variants ``<engine>_<kind>_rounds_per_s`` /
    ``_cpu_ms`` (host CPU ms per 1,000 rounds) / ``_exits``, and the delivery latencies
    of every interrupt run, by engine)."""
    result, latencies = Rounds(), {engine: [] for engine in engines}
    for repeat in range(repeats):
        for engine in engines:
            for kind in ("polling", "interrupts"):
                run = pingpong_run(kind, rounds, engine=engine)
                result.add(f"{engine}_{kind}_rounds_per_s", run.rounds_per_s)
                result.add(f"{engine}_{kind}_cpu_ms", run.cpu_ms_per_1000_rounds)
                result.add(f"{engine}_{kind}_exits", run.exits_per_round)
                latencies[engine] += run.latencies_us
        if progress:
            progress(repeat + 1, repeats)
    return result, latencies
