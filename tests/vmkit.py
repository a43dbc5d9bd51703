"""Test helpers that build a VM the way Firecracker's tests do: below ``Machine``, so the state
machine and ``VcpuHandle`` can be driven event by event."""

from __future__ import annotations

import contextlib
import threading

from kvmlab.devices import MAILBOX_BASE, Mailbox
from kvmlab.engines import KvmEngine
from kvmlab.guest.loader import load_program
from kvmlab.vstate.kick import install_kick_handler
from kvmlab.vstate.vm import Vm

RECV_TIMEOUT = 5.0  # Firecracker's RECV_TIMEOUT_SEC

LAYOUT = {"MAILBOX": MAILBOX_BASE, "MB_ID": 0, "MB_PING": 4, "MB_PONG": 8, "MB_COUNTERS": 0x100, "SERIAL": 0x3F8, "DEBUG_EXIT": 0xF4}


def make_vm(vcpus: int = 1, memory: int = 2 << 20, *, irqchip: bool = False) -> Vm:
    """A VM with its vCPUs and the mailbox device, nothing loaded (Firecracker's ``setup_vcpu``)."""
    engine = KvmEngine()
    try:
        vm = Vm(engine.create_vm(irqchip=irqchip), memory)
    finally:
        engine.close()
    vm.create_vcpus(vcpus)
    vm.mmio_bus.insert(Mailbox(), MAILBOX_BASE, Mailbox.size)
    return vm


@contextlib.contextmanager
def running_vcpus(program, mode: str = "real", vcpus: int = 1, **vm_args):
    """Firecracker's ``vcpu_configured_for_boot``: a loaded VM whose vCPU threads have started
    (Paused). Yields ``(vm, handles)``; on exit sends Finish to every vCPU, joins, closes."""
    install_kick_handler()
    vm = make_vm(vcpus, **vm_args)
    handles = []
    try:
        load_program(vm, program, mode, LAYOUT)
        barrier = threading.Barrier(vcpus + 1)
        handles = [vcpu.start_threaded(barrier) for vcpu in vm.vcpus]
        barrier.wait(RECV_TIMEOUT)
        yield vm, handles
    finally:
        from kvmlab.vstate.protocol import VcpuEvent

        for handle in handles:
            if not handle.finished:
                handle.send_event(VcpuEvent.FINISH)
        for handle in handles:
            assert handle.join(RECV_TIMEOUT), f"vCPU {handle.index} did not finish"
        vm.close()
