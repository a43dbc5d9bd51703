"""Every device access happens exactly once, on both engines, in every CPU mode, while
pause/resume kicks land at random points of a stream of accesses.

The device is a FIFO: a read pops the next number (a read with a side effect, so a read done
twice skips a number) and a write is recorded (so a write done twice shows twice). The guest
pops a number by MMIO and pushes it back by MMIO, then does the same through two ports, and
counts its loop in RAM with a read-modify-write instruction, which an emulator stopped in the
middle of an instruction would run twice. After hundreds of pause/resume cycles on 8 vCPUs,
each vCPU's log must read exactly pop 1, push 1, pop 2, push 2, ... with nothing doubled,
skipped or out of order, and the RAM count must match the loop register.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct

import pytest

from kvmlab import KvmlabError, Machine, programs
from kvmlab.engines import uc_kick
from kvmlab.guest.modes import RESULTS_ADDRESS, RESULTS_STRIDE
from kvmlab.vstate.protocol import VcpuState

MODES = ["real", "protected", "long"]
FIFO_MMIO = 0xB0000  # in the legacy hole (no RAM), reachable from real mode through ES
FIFO_PORT = 0x600
SLOT = 8  # per vCPU: +0 pops (read), +4 pushes (write)
VCPUS = 8
CYCLES = 200

SOURCE = """
.if BITS == 16
    mov ax, FIFO >> 4
    mov es, ax
    .equ DEVICE, 0
.else
    .equ DEVICE, FIFO
.endif
start:
    mov ebx, edi
    shl ebx, 4
    add ebx, RESULTS                    ; ebx -> this vCPU's results (RAM)
    mov esi, edi
    shl esi, 3
    add esi, DEVICE                     ; esi -> this vCPU's MMIO slot
    mov edx, edi
    shl edx, 3
    add edx, PORT                       ; dx -> this vCPU's port slot
    xor ecx, ecx
again:
    inc ecx
    mov eax, dword ptr es:[esi]         ; MMIO read: pops
    mov dword ptr es:[esi + 4], eax     ; MMIO write: pushes what was popped
    in eax, dx                          ; port read: pops
    add dx, 4
    out dx, eax                         ; port write: pushes
    sub dx, 4
    inc dword ptr [ebx]                 ; RAM read-modify-write: the loop count
    jmp again
"""


class RecordingFifo:
    """A slot per vCPU: reading offset +0 pops 1, 2, 3, ...; writing +4 is recorded."""

    size = SLOT * VCPUS

    def __init__(self):
        self.popped = [0] * VCPUS
        self.log: list[list[tuple[str, int]]] = [[] for _ in range(VCPUS)]

    def read(self, offset: int, size: int) -> int:
        slot = offset // SLOT
        assert offset % SLOT == 0 and size == 4, f"unexpected read at +{offset:#x}, {size} bytes"
        self.popped[slot] += 1
        self.log[slot].append(("pop", self.popped[slot]))
        return self.popped[slot]

    def write(self, offset: int, size: int, value: int) -> None:
        assert offset % SLOT == 4 and size == 4, f"unexpected write at +{offset:#x}, {size} bytes"
        self.log[offset // SLOT].append(("push", value))


def check_log(name: str, vcpu: int, log: list[tuple[str, int]]) -> int:
    """The log is pop 1, push 1, pop 2, push 2, ... possibly ending after a pop; returns the
    number of complete pop/push pairs. The first difference is reported."""
    for position, entry in enumerate(log):
        expected = ("pop" if position % 2 == 0 else "push", position // 2 + 1)
        assert entry == expected, f"{name}, vCPU {vcpu}: access {position} was {entry}, expected {expected} (log near it: {log[max(0, position - 4) : position + 4]})"
    return len(log) // 2




@pytest.mark.parametrize("mode", MODES)
def test_every_access_happens_exactly_once_under_kicks(engine_and_kick, machines, mode):
    m = machines(vcpus=VCPUS, memory_mib=2, engine=engine_and_kick)
    mmio, pio = RecordingFifo(), RecordingFifo()
    m.add_device(mmio, FIFO_MMIO)
    m.add_device(pio, FIFO_PORT, bus="pio")
    m.load(programs.from_source(SOURCE, "fifo", fifo=FIFO_MMIO, port=FIFO_PORT), mode=mode)
    m.start()
    for _ in range(CYCLES):
        m.pause()
        m.resume()
    m.pause()
    for vcpu in range(VCPUS):
        mmio_pairs = check_log("MMIO", vcpu, mmio.log[vcpu])
        pio_pairs = check_log("port I/O", vcpu, pio.log[vcpu])
        assert mmio_pairs > 0, f"vCPU {vcpu} made no access at all: the test proves nothing"
        loops = m.save_state(vcpu).regs["rcx"] & 0xFFFF_FFFF
        (ram_count,) = struct.unpack("<I", m.memory.read(RESULTS_ADDRESS + vcpu * RESULTS_STRIDE, 4))
        # Paused somewhere in the loop body: iteration `loops` may be part-way through.
        assert loops - 1 <= ram_count <= loops, f"vCPU {vcpu}: RAM count {ram_count} after {loops} loops"
        assert loops - 1 <= pio_pairs <= mmio_pairs <= loops
        metrics = m.metrics.vcpu(vcpu)
        assert metrics.exit_mmio_read == len(mmio.log[vcpu]) - mmio_pairs
        assert metrics.exit_mmio_write == mmio_pairs
    for vcpu in range(VCPUS):
        assert m.metrics.vcpu(vcpu).interrupted >= CYCLES // 2, f"vCPU {vcpu}: kicks seldom interrupted a run"


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler: the Python kick check is used")
def test_the_c_kick_check_is_built_where_a_compiler_exists():
    """Where the suite runs there is a compiler, so the emulated runs above used the C hook."""
    assert uc_kick.c_hook() is not None


HALT_THEN_MARK = """
start:
    mov ebx, edi
    shl ebx, 4
    add ebx, RESULTS
    mov ecx, LOOPS
spin:
    dec ecx
    jnz spin
    hlt
    mov dword ptr [ebx], 0xdead         ; after the HLT: a vCPU that ran past it writes this
    hlt
"""


def test_a_kick_at_the_moment_of_a_hlt_never_runs_the_guest_past_it(engine_and_kick):
    """Kicks rain on vCPUs that are about to HLT: each vCPU ends with its HLT, once, and the
    instruction after it never runs (a kick mistaken for a HLT, or a HLT for a kick, would
    show here)."""
    # Loops that take some 5-40 ms on each: kvm_pvm emulates guest code at ~4 M instructions/s,
    # Unicorn's JIT with the C kick check runs ~50 times faster.
    fast = engine_and_kick == "emulated" and os.environ[uc_kick.ENV_CHOICE] == "c"
    scale = 50 if fast else 1
    for run in range(10):
        with Machine(vcpus=4, memory_mib=1, engine=engine_and_kick) as m:
            m.load(programs.from_source(HALT_THEN_MARK, "halt", loops=(20_000 + 7_000 * run) * scale), mode="protected")
            m.start()
            while m.exit is None:
                try:
                    m.pause()
                except KvmlabError:
                    pass  # a vCPU halted meanwhile; the others may be paused
                for status in m.states:
                    if status.state is VcpuState.PAUSED:
                        with contextlib.suppress(KvmlabError):
                            m.resume(status.index)
            assert m.wait(10) == 0
            for vcpu in range(4):
                assert m.states[vcpu].reason == "HLT", m.states
                (mark,) = struct.unpack("<I", m.memory.read(RESULTS_ADDRESS + vcpu * RESULTS_STRIDE, 4))
                assert mark == 0, f"run {run}, vCPU {vcpu} ran past its HLT"
