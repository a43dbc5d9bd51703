"""``kvmlab.kvm`` against real /dev/kvm: every ioctl wrapper does what its name says."""

from __future__ import annotations

import errno
import mmap

import pytest

from kvmlab.guest import assemble
from kvmlab.kvm import Cap, ExitReason, Kvm, KvmIoctlError, KvmStats, MpState, VcpuFd, VmFd
from kvmlab.kvm import constants as kc
from kvmlab.kvm import run as kr
from kvmlab.kvm import structs as ks
from kvmlab.kvm.stats import StatType

pytestmark = pytest.mark.kvm


@pytest.fixture
def kvm():
    with Kvm() as k:
        yield k


@pytest.fixture
def vm_and_vcpu(kvm):
    """A VM with 64 KiB of RAM at 0 and one vCPU in real mode at 0x1000."""
    vm = kvm.create_vm()
    memory = mmap.mmap(-1, 0x10000)
    import ctypes

    anchor = ctypes.c_char.from_buffer(memory)
    vm.set_user_memory_region(0, 0, 0x10000, ctypes.addressof(anchor))
    del anchor
    vcpu = vm.create_vcpu(0, kvm.get_vcpu_mmap_size())
    vcpu.set_cpuid2(kvm.get_supported_cpuid())
    sregs = vcpu.get_sregs()
    for name in ("cs", "ds", "es", "ss"):
        segment = getattr(sregs, name)
        segment.base, segment.selector = 0, 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip, regs.rflags = 0x1000, 2
    vcpu.set_regs(regs)
    yield vm, vcpu, memory
    vcpu.close()
    vm.close()
    memory.close()


def test_system_ioctls(kvm):
    assert kvm.get_api_version() == 12
    assert kvm.get_vcpu_mmap_size() >= 4096
    assert kvm.check_extension(Cap.USER_MEMORY) == 1
    assert kvm.max_vcpus() >= 1
    cpuid = kvm.get_supported_cpuid()
    vendor_leaf = next(e for e in cpuid if e.function == 0)
    assert vendor_leaf.eax >= 1
    msrs = kvm.get_msr_index_list()
    assert 0x174 in msrs and len(msrs) == len(set(msrs))


def test_vm_ioctls(kvm):
    vm = kvm.create_vm()
    assert isinstance(vm, VmFd)
    try:
        vm.set_tss_addr(0xFFFBD000)
        vm.create_irqchip()  # before any vCPU exists
        vm.create_pit2()
        vcpu = vm.create_vcpu(0, kvm.get_vcpu_mmap_size())
        assert isinstance(vcpu, VcpuFd) and vcpu.index == 0
        with pytest.raises(KvmIoctlError) as err:
            vm.create_vcpu(0, kvm.get_vcpu_mmap_size())  # the same id twice
        assert err.value.errno == errno.EEXIST and "KVM_CREATE_VCPU failed" in str(err.value)
        with pytest.raises(KvmIoctlError):
            vm.create_irqchip()  # too late (and twice)
        vcpu.close()
    finally:
        vm.close()


def test_vcpu_register_roundtrips(vm_and_vcpu):
    _, vcpu, _ = vm_and_vcpu
    regs = vcpu.get_regs()
    regs.rax, regs.r15 = 0x1122334455667788, 42
    vcpu.set_regs(regs)
    again = vcpu.get_regs()
    assert (again.rax, again.r15, again.rip) == (0x1122334455667788, 42, 0x1000)

    sregs = vcpu.get_sregs()
    sregs.cr2 = 0xCAFE000
    vcpu.set_sregs(sregs)
    assert vcpu.get_sregs().cr2 == 0xCAFE000

    fpu = vcpu.get_fpu()
    fpu.xmm[3][0:4] = [1, 2, 3, 4]
    vcpu.set_fpu(fpu)
    assert list(vcpu.get_fpu().xmm[3][0:4]) == [1, 2, 3, 4]

    assert vcpu.set_msrs([(0x174, 0x10)]) == 1  # IA32_SYSENTER_CS
    assert vcpu.get_msrs([0x174]) == [(0x174, 0x10)]

    assert vcpu.get_mp_state() == MpState.RUNNABLE
    assert vcpu.get_xcrs().nr_xcrs >= 1
    assert len(vcpu.get_xsave()) == 4096
    assert vcpu.get_debugregs().dr7 == 0x400
    assert vcpu.get_vcpu_events().exception.injected == 0
    cpuid = vcpu.get_cpuid2()
    assert any(e.function == 1 for e in cpuid)
    with pytest.raises(KvmIoctlError):
        vcpu.get_lapic()  # no in-kernel irqchip


def test_kvm_run_exits_and_binary_stats(vm_and_vcpu):
    _, vcpu, memory = vm_and_vcpu
    code = assemble("mov dx, 0x3f8\nmov al, 0x41\nout dx, al\nmov ax, 0xd000\nmov es, ax\nmov word ptr es:[0x10], 0x1234\nhlt", 16, 0x1000)
    memory[0x1000 : 0x1000 + len(code)] = code
    stats = vcpu.get_stats_fd()
    assert isinstance(stats, KvmStats)
    assert {"exits", "mmio_exits", "halt_exits", "signal_exits", "insn_emulation"} <= set(stats.names)
    assert all(d.type in StatType or isinstance(d.type, int) for d in stats.descriptors)

    assert vcpu.run() == 0 and vcpu.exit_reason == ExitReason.IO
    io = vcpu.run_struct.exit.io
    assert (io.direction, io.size, io.port, io.count) == (kc.KVM_EXIT_IO_OUT, 1, 0x3F8, 1)
    assert bytes(vcpu.io_data(io.data_offset, 1)) == b"A"
    assert io.data_offset == kr.PIO_DATA_OFFSET  # where the emulated engine puts it too

    assert vcpu.run() == 0 and vcpu.exit_reason == ExitReason.MMIO
    mmio = vcpu.run_struct.exit.mmio
    assert (mmio.phys_addr, mmio.len, mmio.is_write, bytes(mmio.data[:2])) == (0xD0010, 2, 1, b"\x34\x12")

    assert vcpu.run() == 0 and vcpu.exit_reason == ExitReason.HLT
    counts = stats.read()
    assert counts["mmio_exits"] == 1 and counts["halt_exits"] == 1 and counts["exits"] >= 3
    stats.close()


def test_immediate_exit_makes_kvm_run_return_eintr(vm_and_vcpu):
    _, vcpu, _ = vm_and_vcpu
    vcpu.set_kvm_immediate_exit(1)
    assert vcpu.run() == errno.EINTR
    vcpu.set_kvm_immediate_exit(0)


def test_guest_debug_single_steps_instruction_by_instruction(vm_and_vcpu):
    _, vcpu, memory = vm_and_vcpu
    code = assemble("inc ax\ninc ax\nnop\nhlt", 16, 0x1000)
    memory[0x1000 : 0x1000 + len(code)] = code
    vcpu.set_guest_debug(kc.KVM_GUESTDBG_ENABLE | kc.KVM_GUESTDBG_SINGLESTEP)
    pcs = []
    for _ in range(3):
        assert vcpu.run() == 0 and vcpu.exit_reason == ExitReason.DEBUG
        pcs.append(vcpu.run_struct.exit.debug.arch.pc)
    assert pcs == [0x1001, 0x1002, 0x1003], "one KVM_EXIT_DEBUG per instruction, pc after it"
    assert vcpu.get_regs().rax & 0xFFFF == 2
    vcpu.set_guest_debug(0)
    assert vcpu.run() == 0 and vcpu.exit_reason == ExitReason.HLT


def test_structs_print_and_convert():
    regs = ks.kvm_regs(rax=1, rip=0x1000)
    assert regs.to_dict()["rip"] == 0x1000 and "rax=1" in repr(regs)
    msrs = ks.msrs_with([0x10, 0x174], [5, 6])
    assert msrs.nmsrs == 2 and msrs.entries[1].data == 6


def test_the_irqchip_inputs_lines_irqfds_and_msis(kvm):
    """KVM_IRQ_LINE(_STATUS), KVM_IRQFD (and its deassign) and KVM_SIGNAL_MSI on a VM with the
    irqchip, and KVM_GET_TSC_KHZ on its vCPU. What the guest makes of them: tests/test_irqchip.py."""
    from kvmlab.kvm import EventFd

    vm = kvm.create_vm()
    try:
        vm.create_irqchip()
        vcpu = vm.create_vcpu(0, kvm.get_vcpu_mmap_size())
        assert vcpu.get_tsc_khz() > 100_000  # a TSC of more than 100 MHz
        vm.irq_line(4, 1)
        vm.irq_line(4, 0)
        # The IOAPIC's pins start masked and the PIC is not initialized: nobody takes an edge on
        # GSI 20 (IOAPIC only), so KVM says every controller ignored it.
        assert vm.irq_line_status(20, 1) < 0
        vm.irq_line_status(20, 0)
        with EventFd("edge") as edge, EventFd("level") as level, EventFd("resample") as resample:
            vm.irqfd(edge.fd, 5)
            with pytest.raises(KvmIoctlError) as err:
                vm.irqfd(edge.fd, 5)  # the same eventfd on the same GSI twice
            assert err.value.errno == errno.EBUSY
            vm.irqfd(level.fd, 6, resample_fd=resample.fd)
            edge.write(1)  # injects inside the write (no vCPU runs: it only sets the line)
            vm.irqfd_deassign(edge.fd, 5)
            vm.irqfd_deassign(level.fd, 6)
            vm.irqfd_deassign(edge.fd, 5)  # not assigned any more: KVM answers 0 all the same
            vm.irqfd(edge.fd, 5)  # free again
        # The vCPU's LAPIC is software-disabled after reset: the guest blocks the MSI.
        assert vm.signal_msi(0xFEE0_0000, 0x40) == 0
        vcpu.close()
    finally:
        vm.close()


def test_irq_level_is_one_struct_with_its_status_over_the_gsi():
    level = ks.kvm_irq_level(irq=7, level=1)
    assert (level.irq, level.level, level.status) == (7, 1, 7)
    level.status = -1
    assert level.irq == 0xFFFF_FFFF
