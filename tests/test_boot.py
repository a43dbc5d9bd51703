"""Booting real kernels: our own Multiboot test kernels (tests/kernels/*.s, assembled and linked
at test time) on real KVM with 1, 2 and 4 vCPUs, and on the emulated engine with one; their
serial output asserted line by line; the loader's bad-input errors; the never-hang rules for a
kernel that spins with interrupts off; the ``kvmlab boot`` exit-status convention."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import time
import tracemalloc

import pytest

from kvmlab.devices.fw_cfg import FwCfg
from kvmlab.errors import ConfigError, MachineStateError, MachineTimeoutError
from kvmlab.guest.elf import read_elf, write_elf32
from kvmlab.guest.kernels import smp_demo
from kvmlab.guest.multiboot import INFO_AREA, MultibootError, plan
from kvmlab.lab import record_states
from kvmlab.kvm.constants import MpState
from kvmlab.lab.inspect import mp_state_name
from kvmlab.vstate.exits import ExitCode
from kvmlab.vstate.protocol import VcpuState, VcpuStatus

from .kernelkit import symbols

MIB = 1 << 20


def expected_report(name: str, cmdline: str, vcpus: int, memory_mib: int, *, irqchip: bool, initrd: bytes | None) -> list[str]:
    """What smp.s prints, from what the machine is: the loader's information structure, then
    fw_cfg, then one line per AP (in the order they won the print lock), then the total."""
    mmap = [
        "mmap: 0x00000000 0x000a0000 1",  # low RAM
        "mmap: 0x000a0000 0x00060000 2",  # the legacy hole (VGA, ROMs; kvmlab's mailbox): reserved
        f"mmap: 0x00100000 {(memory_mib * MIB - MIB):#010x} 1",
    ]
    if irqchip:
        mmap += ["mmap: 0xfec00000 0x00001000 2", "mmap: 0xfee00000 0x00001000 2"]  # IOAPIC, LAPIC
    module = [f"module: {len(initrd)} bytes: {initrd.decode().splitlines()[0]}"] if initrd else []
    return [
        "kernel: hello from a multiboot kernel",
        f"cmdline: {name} {cmdline}".rstrip(),
        f"upper memory: {memory_mib - 1} MiB",
        "lower memory: 640 KiB",
        *mmap,
        *module,
        "fw_cfg signature: QEMU",
        f"fw_cfg cpus: {vcpus}",
        f"fw_cfg ram: {memory_mib} MiB",
        f"fw_cfg cmdline: {cmdline}",
        *[f"AP {i} up" for i in range(1, vcpus)],
        f"all {vcpus} up",
    ]


def split_ap_lines(lines: list[str]) -> tuple[list[str], list[str]]:
    """APs announce themselves in whatever order they win the lock: compare those as a set."""
    aps = sorted(line for line in lines if line.startswith("AP "))
    return [line for line in lines if not line.startswith("AP ")], aps


# --- SMP kernels on real KVM ------------------------------------------------------------------------


@pytest.mark.kvm
@pytest.mark.parametrize("vcpus", [1, 2, 4])
def test_smp_kernel_brings_up_every_ap_and_exits_with_its_code(machines, kernels, tmp_path, vcpus):
    initrd = tmp_path / "initrd.txt"
    initrd.write_bytes(b"an initrd for the test kernel\nsecond line\n")
    m = machines(vcpus=vcpus, memory_mib=64)
    image = m.boot(kernels.smp32, cmdline=f"exit=21 vcpus={vcpus}", initrd=initrd)
    assert image.format == "ELF32" and image.entry == read_elf(kernels.smp32.read_bytes()).entry
    assert m.irqchip is True
    m.start()
    code = m.wait(timeout=30)
    assert code == 21 and m.debug_exit.last_code == 21
    assert code.reason == "vCPU 0: debug-exit port write (21)"
    want = expected_report("smp32.elf", f"exit=21 vcpus={vcpus}", vcpus, 64, irqchip=True, initrd=initrd.read_bytes())
    assert split_ap_lines(m.console.text.splitlines()) == split_ap_lines(want)
    # every vCPU ran guest code: the BSP drove the UART and fw_cfg, each AP printed its line
    assert m.metrics.vcpu(0).exit_io_out > 200 and m.metrics.vcpu(0).exit_io_in > 200
    for ap in range(1, vcpus):
        assert m.metrics.vcpu(ap).exit_io_out >= len(f"AP {ap} up\n")


@pytest.mark.kvm
def test_elf64_kernel_boots_the_same_way(machines, kernels):
    m = machines(vcpus=2, memory_mib=32)
    image = m.boot(kernels.smp64, cmdline="exit=5")
    assert image.format == "ELF64"
    m.start()
    assert m.wait(timeout=30) == 5
    want = expected_report("smp64.elf", "exit=5", 2, 32, irqchip=True, initrd=None)
    assert split_ap_lines(m.console.text.splitlines()) == split_ap_lines(want)


@pytest.mark.kvm
def test_without_exit_argument_the_code_is_zero_and_the_module_line_absent(machines, kernels):
    m = machines(vcpus=1, memory_mib=16)
    m.boot(kernels.smp32)
    m.start()
    assert m.wait(timeout=30) == 0
    assert m.console.text.splitlines() == expected_report("smp32.elf", "", 1, 16, irqchip=True, initrd=None)


def test_smp_kernel_with_one_vcpu_runs_on_both_engines(machines, kernels, engine):
    m = machines(vcpus=1, memory_mib=8, engine=engine)
    m.boot(kernels.smp32, cmdline="exit=9")
    m.start()
    assert m.wait(timeout=60) == 9
    assert m.irqchip is (engine == "kvm")
    assert m.console.text.splitlines() == expected_report("smp32.elf", "exit=9", 1, 8, irqchip=engine == "kvm", initrd=None)


@pytest.mark.kvm
def test_flat_binary_with_header_addresses_loads_and_gets_a_zeroed_bss(machines, kernels):
    data = kernels.kludge.read_bytes()
    m = machines(vcpus=1, memory_mib=4, irqchip=True)
    m.memory.write(0x100000 + len(data), b"\xff" * 0x2000)  # dirt where the bss goes
    image = m.boot(kernels.kludge)
    assert image.format == "a.out kludge (header addresses)"
    assert image.chunks[0][0] == 0x100000 and image.chunks[0][2] == len(data) + 0x2000
    m.start()
    assert m.wait(timeout=10) == 7
    assert m.console.text == "kludge: loaded from a flat binary, bss zeroed\n"


# --- MP states: APs wait for INIT without spinning, and still answer ----------------------------------


@pytest.mark.parametrize(
    "mp_state, status, inspected",
    [  # KVM's meanings (Documentation/virt/kvm/api.rst, KVM_GET_MP_STATE)
        ("UNINITIALIZED", "Running (waiting for INIT)", "UNINITIALIZED (waiting for INIT)"),  # an AP before its INIT
        ("INIT_RECEIVED", "Running (waiting for SIPI)", "INIT_RECEIVED (waiting for SIPI)"),  # ready for a SIPI
        ("SIPI_RECEIVED", "Running (SIPI received)", "SIPI_RECEIVED (SIPI received)"),
        ("HALTED", "Running (halted)", "HALTED"),  # executed HLT, waits for an interrupt
        ("RUNNABLE", "Running", "RUNNABLE"),
    ],
)
def test_each_mp_state_reads_as_kvm_defines_it(mp_state, status, inspected):
    assert str(VcpuStatus(1, VcpuState.RUNNING, mp_state=mp_state)) == status  # the control panel, the timeline
    assert mp_state_name(MpState[mp_state]) == inspected  # the inspector


@pytest.mark.kvm
def test_aps_waiting_for_init_still_answer_pause_resume_and_close(machines, kernels):
    """spin.s never starts its APs: they sit in KVM_RUN waiting for INIT, which must not burn
    a host CPU, and must still answer Pause/Resume/Finish within the kick's time."""
    m = machines(vcpus=3, memory_mib=8, timeout=2.0)
    m.boot(kernels.spin)
    m.start()
    time.sleep(0.3)
    cpu_before = time.process_time()
    time.sleep(0.5)
    cpu_used = time.process_time() - cpu_before
    states = m.states
    assert [s.mp_state for s in states[1:]] == ["UNINITIALIZED", "UNINITIALIZED"]
    assert str(states[1]) == "Running (waiting for INIT)"
    # the BSP spins (one host CPU, as a guest loop must); the waiting APs add next to nothing
    assert cpu_used < 0.5 * 1.5, f"3 vCPUs used {cpu_used:.2f} s of CPU in 0.5 s: the APs spin"
    started = time.monotonic()
    m.pause()
    assert [s.state for s in m.states] == [VcpuState.PAUSED] * 3
    assert [s.mp_state for s in m.states[1:]] == ["UNINITIALIZED", "UNINITIALIZED"]
    m.resume(2)
    assert m.states[2].state is VcpuState.RUNNING
    m.close()
    assert time.monotonic() - started < 2.0


@pytest.mark.kvm
def test_a_kernel_that_spins_with_interrupts_off_times_out_and_still_pauses_and_closes(machines, kernels):
    m = machines(vcpus=1, memory_mib=8)
    m.boot(kernels.spin)
    m.start()
    with pytest.raises(MachineTimeoutError, match=r"still running after 0.5 s"):
        m.wait(timeout=0.5)
    counter = symbols(kernels.spin)["counter"]
    started = time.monotonic()
    m.pause()
    assert m.states[0].state is VcpuState.PAUSED
    paused_at = m.memory.read_u32(counter)
    time.sleep(0.1)
    assert m.memory.read_u32(counter) == paused_at > 0, "a paused vCPU must not run guest code"
    assert 0x100000 <= m.save_state(0).regs["rip"] < counter
    m.resume()
    time.sleep(0.05)
    assert m.memory.read_u32(counter) != paused_at
    m.close()
    assert time.monotonic() - started < 2.0


@pytest.mark.kvm
def test_after_the_exit_the_halted_aps_are_finished_too(machines, kernels):
    m = machines(vcpus=4, memory_mib=16)
    m.boot(kernels.smp32, cmdline="exit=1")
    m.start()
    assert m.wait(timeout=30) == 1
    assert [s.state for s in m.states] == [VcpuState.FINISHED] * 4


# --- fw_cfg, as a guest's driver sees it --------------------------------------------------------------


def read_item(device: FwCfg, key: int, length: int) -> bytes:
    device.write(0, 2, key)
    return bytes(device.read(1, 1) for _ in range(length))


def test_fw_cfg_items_unknown_keys_and_reselection():
    device = FwCfg(64 * MIB, 4)
    device.set_cmdline("console=ttyS0")
    device.set_kernel(0x100000, 0x5000, 0x10000C, (0x200000, 123))
    assert read_item(device, 0x00, 6) == b"QEMU\0\0"  # past the end: zeros
    assert read_item(device, 0x03, 8) == struct.pack("<Q", 64 * MIB)
    assert read_item(device, 0x05, 2) == read_item(device, 0x0F, 2) == struct.pack("<H", 4)
    assert read_item(device, 0x14, 4) == struct.pack("<I", len("console=ttyS0") + 1)
    assert read_item(device, 0x15, 14) == b"console=ttyS0\0"
    assert read_item(device, 0x07, 4) + read_item(device, 0x08, 4) + read_item(device, 0x10, 4) == struct.pack("<III", 0x100000, 0x5000, 0x10000C)
    assert read_item(device, 0x0A, 4) + read_item(device, 0x0B, 4) == struct.pack("<II", 0x200000, 123)
    assert read_item(device, 0x4242, 4) == bytes(4)
    device.write(0, 2, 0x00)
    assert bytes([device.read(1, 1), device.read(1, 1)]) == b"QE"
    device.write(0, 2, 0x00)  # a new selection starts at the item's first byte again
    assert device.read(1, 1) == ord("Q")


# --- bad input ----------------------------------------------------------------------------------------


def mb_header(flags: int, checksum: int | None = None) -> bytes:
    return struct.pack("<III", 0x1BADB002, flags, (-(0x1BADB002 + flags) if checksum is None else checksum) & 0xFFFFFFFF)


@pytest.fixture
def unbuilt(machines):
    """A one-vCPU machine on KVM to boot into; its VM is built by boot()."""
    return machines(vcpus=1, memory_mib=4)


@pytest.mark.kvm
def test_not_elf_and_no_header_says_which(unbuilt):
    with pytest.raises(MultibootError, match=r"kernel has no multiboot header in its first 8192 bytes .*not an ELF file \(it starts with 68 65 6c 6c"):
        unbuilt.boot(b"hello world, I am no kernel" * 10)


@pytest.mark.kvm
def test_elf_without_header_says_it_is_an_elf(unbuilt):
    python = os.path.realpath(sys.executable)
    with pytest.raises(MultibootError, match=r"no multiboot header .* it is an ELF file.*put the header in a section linked first"):
        unbuilt.boot(python)


@pytest.mark.kvm
def test_bad_checksum_is_named(unbuilt):
    with pytest.raises(MultibootError, match="but its checksum is wrong"):
        unbuilt.boot(mb_header(3, checksum=0) + bytes(64))


@pytest.mark.kvm
def test_relocatable_object_is_refused(unbuilt, kernels):
    with pytest.raises(MultibootError, match=r"ELF of type 1, not an executable \(2\): link it with a fixed address"):
        unbuilt.boot(kernels.smp32_object)


@pytest.mark.kvm
def test_memory_too_small_for_the_image_says_how_much(machines, kernels):
    m = machines(vcpus=1, memory_mib=1)
    with pytest.raises(MultibootError, match=r"smp32.elf segment at \[0x100000, 0x144\w+\) .* is outside guest RAM .*memory_mib >= 2"):
        m.boot(kernels.smp32)
    assert m.memory.read(0x8000, 16) == bytes(16), "nothing may be written before every check passed"


@pytest.mark.kvm
@pytest.mark.parametrize(
    "flags, address, entry, message",
    [
        (3, INFO_AREA.start + 0x100, INFO_AREA.start + 0x10C, r"overlaps the multiboot information area \[0x6000, 0x8000\); link it elsewhere"),
        (3, 0x40000000, 0x4000000C, r"outside guest RAM .*memory_mib >= 1025"),
        (3, 0xB8000, 0xB800C,
         r"segment at \[0xb8000, 0xb800d\) overlaps the legacy VGA/BIOS hole \[0xa0000, 0x100000\), which is never RAM; "
         r"link it below 0xa0000 or at 1 MiB or above"),
        (3, 0x100000, 0x200000, r"the entry point 0x200000 is not inside anything the kernel loads \(\[0x100000, 0x10000d\)\)"),
        (1 << 2, 0x100000, 0x10000C, r"requires a video mode \(multiboot flag 2\); kvmlab has no display"),
    ],
    ids=["over-info-area", "beyond-ram", "in-legacy-hole", "entry-outside", "video-mode"],
)
def test_bad_images_are_refused_before_anything_is_written(unbuilt, flags, address, entry, message):
    image = write_elf32([(address, mb_header(flags) + b"\xf4", 13)], entry)
    with pytest.raises(MultibootError, match=message):
        unbuilt.boot(image)
    assert unbuilt.memory.read(INFO_AREA.start, 16) == bytes(16)


# ELF32 field offsets (the ELF header is 52 bytes; write_elf32 puts the program headers right after it)
E_PHOFF, E_PHENTSIZE, E_PHNUM = 28, 42, 44
PHDR, PHDR_SIZE = 52, 32
P_OFFSET, P_VADDR, P_PADDR, P_MEMSZ = 4, 8, 12, 20

#: the smallest bootable ELF: one 13-byte segment at 1 MiB (file offset 96, the file 112 bytes)
TINY = write_elf32([(0x100000, mb_header(3) + b"\xf4", 13)], 0x10000C)


def patched(image: bytes, *edits: tuple[int, str, int]) -> bytes:
    """``image`` with fields overwritten, ``(offset, struct format, value)`` each: a corrupt file."""
    out = bytearray(image)
    for offset, fmt, value in edits:
        struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.kvm
@pytest.mark.parametrize(
    "image, message",
    [
        (patched(TINY, (E_PHENTSIZE, "<H", 0), (E_PHNUM, "<H", 0xFFFF)),
         r"kernel has program header entries of 0 bytes; an ELF32 program header is 32"),
        (patched(TINY, (E_PHNUM, "<H", 0xFFFF)),
         r"kernel has 65535 program headers; kvmlab reads at most 2048 \(a 64 KiB table, as Linux\): the file is corrupt"),
        (patched(TINY, (E_PHNUM, "<H", 100)),
         r"kernel is truncated or corrupt: expected at least 3252 bytes \(the program header table\), the file has 112"),
        (patched(TINY, (PHDR + P_OFFSET, "<I", 0x10000)),
         r"kernel is truncated or corrupt: expected at least 65549 bytes \(segment 0\), the file has 112"),
        (patched(TINY, (PHDR + P_MEMSZ, "<I", 4)),
         r"segment 0 has more bytes in the file \(13\) than in memory \(4\): the file is corrupt"),
        (patched(TINY, (PHDR + P_PADDR, "<I", 0xFFFFFFF8)),
         r"segment 0 \(13 bytes at 0xfffffff8\) runs past the end of the 32-bit address space"),
        (TINY[:100], r"kernel is truncated or corrupt: expected at least 109 bytes \(segment 0\), the file has 100"),
        (TINY[:60], r"kernel is truncated or corrupt: expected at least 84 bytes \(the program header table\), the file has 60"),
        (patched(TINY + TINY[PHDR : PHDR + PHDR_SIZE] * 2048, (E_PHOFF, "<I", len(TINY)), (E_PHNUM, "<H", 2048)),
         r"kernel: segments 0 and 1 overlap in memory \(\[0x100000, 0x10000d\) and \[0x100000, 0x10000d\)\); the file is"),
    ],
    ids=["phentsize-0", "phnum-over-limit", "phdr-table-past-end", "segment-past-end", "memsz-below-filesz",
         "segment-past-4-GiB", "truncated-in-segment", "truncated-in-phdrs", "2048-headers-one-segment"],
)
def test_corrupt_elf_headers_are_refused_before_anything_is_written(unbuilt, image, message):
    with pytest.raises(MultibootError, match=message):
        unbuilt.boot(image)
    assert unbuilt.memory.read(0x100000, 16) == bytes(16)


def test_segments_are_not_copied_however_many_headers_name_them():
    """512 headers naming the same 1 MiB of the file at 512 addresses: planning holds the file
    once, it does not copy it 512 times (the guest-RAM check that refuses this image comes
    later, in write(); by then a copy per header would have cost 512 MiB)."""
    one = write_elf32([(0x100000, mb_header(3) + b"\xf4" + bytes(MIB - 13), MIB)], 0x10000C)
    phdr = one[PHDR : PHDR + PHDR_SIZE]
    table = b"".join(patched(phdr, (P_VADDR, "<I", 0x100000 + i * MIB), (P_PADDR, "<I", 0x100000 + i * MIB)) for i in range(512))
    image = patched(one + table, (E_PHOFF, "<I", len(one)), (E_PHNUM, "<H", 512))
    tracemalloc.start()
    try:
        planned = plan(image, "kernel")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(planned.chunks) == 512 and planned.kernel_range.size == 512 * MIB
    assert peak < 16 * MIB, f"planning took {peak / MIB:.0f} MiB for a {len(image) / MIB:.0f} MiB file"


def make_fifo(folder) -> str:
    os.mkfifo(folder / "fifo")
    return str(folder / "fifo")


def make_sparse(folder) -> str:
    (folder / "huge.img").write_bytes(b"")
    os.truncate(folder / "huge.img", 5 * MIB)  # a hole: 5 MiB that cost no disk
    return str(folder / "huge.img")


@pytest.mark.kvm
@pytest.mark.parametrize("which", ["kernel", "initrd"])
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda folder: "/dev/zero", r"the {which} '{path}' is a character device, not a regular file"),
        (make_fifo, r"the {which} '{path}' is a FIFO, not a regular file"),
        (lambda folder: str(folder), r"the {which} '{path}' is a directory, not a regular file"),
        (make_sparse, r"the {which} '{path}' is 5,242,880 bytes, more than the machine's memory \(4 MiB\)"),
        (lambda folder: "/proc/self/status", r"the {which} '{path}' grew while kvmlab read it \(it said 0 bytes\)"),
        (lambda folder: str(folder / "nope"), r"cannot read the {which} '{path}': No such file or directory"),
    ],
    ids=["dev-zero", "fifo", "directory", "larger-than-memory", "proc-file", "missing"],
)
def test_inputs_that_are_not_plain_files_are_refused_by_name(unbuilt, kernels, tmp_path, which, make, message):
    """Each fails at once (a FIFO without a writer, /dev/zero, a file bigger than the guest:
    nothing is read), and says whether it was the kernel or the initrd."""
    path = make(tmp_path)
    kernel, initrd = (path, None) if which == "kernel" else (kernels.smp32, path)
    with pytest.raises(MultibootError, match=message.format(which=which, path=re.escape(path))):
        unbuilt.boot(kernel, initrd=initrd)


@pytest.mark.kvm
def test_initrd_too_big_for_memory(unbuilt, kernels, tmp_path):
    big = tmp_path / "big.img"
    big.write_bytes(bytes(4 * MIB))
    with pytest.raises(MultibootError, match=r"module big.img at .* is outside guest RAM"):
        unbuilt.boot(kernels.smp32, initrd=big)


@pytest.mark.kvm
def test_a_kernel_linked_high_enters_at_the_physical_address(machines, kernels):
    """Like GRUB: an ELF whose entry is virtual (vaddr != paddr) enters at its physical twin."""
    from kvmlab.guest.elf import read_elf as parse

    elf = parse(kernels.smp32.read_bytes())
    high = 0xC0000000
    segments = [(seg.paddr, seg.data, seg.memsz) for seg in elf.segments]
    relinked = bytearray(write_elf32(segments, elf.entry + high))
    for i, seg in enumerate(elf.segments):  # move every vaddr up, keep paddr: a higher-half layout
        struct.pack_into("<I", relinked, PHDR + PHDR_SIZE * i + P_VADDR, seg.vaddr + high)
    m = machines(vcpus=1, memory_mib=8)
    image = m.boot(bytes(relinked), cmdline="exit=3")
    assert image.entry == elf.entry
    m.start()
    assert m.wait(timeout=30) == 3


@pytest.mark.kvm
def test_several_vcpus_without_irqchip_are_refused(machines, kernels):
    m = machines(vcpus=2, memory_mib=8, irqchip=False)
    with pytest.raises(ConfigError, match="needs KVM's in-kernel irqchip.*created with irqchip=False"):
        m.boot(kernels.smp32)


@pytest.mark.kvm
def test_a_device_over_the_in_kernel_lapic_is_refused(machines):
    from kvmlab.devices import Mailbox
    from kvmlab.errors import DeviceOverlapError

    m = machines(vcpus=1, memory_mib=8, irqchip=True)
    with pytest.raises(DeviceOverlapError, match="KVM's in-kernel IOAPIC/LAPIC"):
        m.add_device(Mailbox("shadow"), 0xFEE00000)
    plain = machines(vcpus=1, memory_mib=8, irqchip=False)
    plain.add_device(Mailbox("free"), 0xFEE00000)  # without the irqchip the page is free


@pytest.mark.emulated
def test_several_vcpus_on_the_emulated_engine_are_refused(machines, kernels):
    m = machines(vcpus=2, memory_mib=8, engine="emulated")
    with pytest.raises(ConfigError, match="the emulated engine has none: boot with vcpus=1, or on KVM"):
        m.boot(kernels.smp32)


@pytest.mark.kvm
def test_boot_twice_or_after_load_or_start_is_refused(machines, kernels):
    m = machines(vcpus=1, memory_mib=8)
    m.boot(kernels.smp32, cmdline="exit=0")
    with pytest.raises(MachineStateError, match="already loaded"):
        m.boot(kernels.smp32)
    m.start()
    with pytest.raises(MachineStateError):
        m.boot(kernels.smp32)
    m.wait(timeout=10)


# --- the command line ------------------------------------------------------------------------------


def kvmlab_boot(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmlab", "boot", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.kvm
def test_cli_exit_status_follows_qemu_debug_exit(kernels):
    result = kvmlab_boot(str(kernels.smp32), "--vcpus", "4", "--memory-mib", "64", "--append", "exit=21")
    assert result.returncode == (21 << 1) | 1 == 43, result.stderr
    want = expected_report("smp32.elf", "exit=21", 4, 64, irqchip=True, initrd=None)
    assert split_ap_lines(result.stdout.splitlines()) == split_ap_lines(want)


@pytest.mark.kvm
def test_cli_timeout_status_and_message(kernels):
    result = kvmlab_boot(str(kernels.spin), "--timeout", "0.5")
    assert result.returncode == 124
    assert result.stderr == "kvmlab boot: the guest did not write the debug-exit port (0xf4) within 0.5 s; stopped it\n"


@pytest.mark.kvm
def test_cli_triple_fault_keeps_qemus_status_while_machine_says_error(kernels, machines):
    """Machine reports a triple fault as an error (ExitCode.TRIPLE_FAULT); ``kvmlab boot``
    keeps QEMU's status for it (0, as ``qemu -no-reboot``), and says why on stderr."""
    m = machines(vcpus=1, memory_mib=16)
    m.boot(kernels.triple)
    m.start()
    assert m.wait(10) == ExitCode.TRIPLE_FAULT
    result = kvmlab_boot(str(kernels.triple), "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "kvmlab boot: the guest stopped without writing the debug-exit port: vCPU 0: SHUTDOWN (triple fault)\n"


@pytest.mark.kvm
def test_cli_bad_kernel_is_one_line_and_status_1(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    result = kvmlab_boot(str(junk))
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "junk.bin has no multiboot header" in result.stderr, result.stderr


# --- the demo kernel kvmlab builds itself (notebook 07), watched -------------------------------------


@pytest.mark.kvm
def test_smp_demo_starts_aps_one_by_one_and_the_timeline_shows_it(machines):
    m = machines(vcpus=4, memory_mib=16)
    m.boot(smp_demo(step_exits=3_000, work=1_000), cmdline="demo")
    timeline = record_states(m, start=True, timeout=30)
    assert m.exit == 0
    assert m.console.text.splitlines() == [
        "smp demo: bootstrap processor up, 4 CPUs (fw_cfg)",
        *[line for ap in (1, 2, 3) for line in (f"BSP: INIT + SIPI to APIC {ap}", f"AP {ap} up")],
        "all 4 CPUs done",
    ]
    # exactly the exits the kernel makes: the BSP's pacing writes, each AP's work
    assert m.metrics.vcpu(0).exit_mmio_write == 3 * 3_000
    assert [m.metrics.vcpu(ap).exit_mmio_write for ap in (1, 2, 3)] == [1_000] * 3
    assert [m.mailbox.counter(ap) for ap in (1, 2, 3)] == [1] * 3  # the last value each wrote
    came_up = []
    for ap in (1, 2, 3):
        rows = timeline[timeline.vcpu == ap]
        first_running = rows[rows.mp_state == "RUNNABLE"].t.min()
        came_up.append(first_running)
        assert rows.iloc[-1].state == "Finished"
        # KVM with the in-kernel LAPIC: UNINITIALIZED until the INIT, INIT_RECEIVED until the
        # SIPI (sent right after it, so usually too short to see), then RUNNABLE; HALTED at the end
        seen = [mp for i, mp in enumerate(rows.mp_state) if i == 0 or mp != rows.mp_state.iloc[i - 1]]
        assert seen in (["UNINITIALIZED", "RUNNABLE", "HALTED"], ["UNINITIALIZED", "INIT_RECEIVED", "RUNNABLE", "HALTED"]), f"AP {ap}: {seen}"
        waiting = rows[(rows.state == "Running") & (rows.t < first_running)]
        assert waiting.shown.iloc[0] == "Running (waiting for INIT)", f"AP {ap}: {waiting.shown.tolist()}"
        assert set(waiting.shown) <= {"Running (waiting for INIT)", "Running (waiting for SIPI)"}, f"AP {ap}: {waiting.shown.tolist()}"
    assert came_up == sorted(came_up), f"APs came up out of order: {came_up}"


@pytest.mark.kvm
def test_control_panel_and_inspector_show_aps_waiting_for_init(machines):
    from kvmlab.widgets import ControlPanel, CpuInspector

    m = machines(vcpus=2, memory_mib=8)
    m.boot(smp_demo(step_exits=2_000_000))  # the BSP paces for a long while: AP 1 waits
    panel, inspector = ControlPanel(m), CpuInspector(m)
    try:
        m.start()
        deadline = time.monotonic() + 5
        while panel.state_text(1) != "Running (waiting for INIT)" and time.monotonic() < deadline:
            time.sleep(0.01)
        panel.session.refresh_now()  # render now: the MP state follows the clock, not an event
        assert "Running (waiting for INIT)" in panel.state_labels[1].value
        m.pause(1)
        panel.session.refresh_now()  # render now: the MP state follows the clock, not an event
        assert panel.state_text(1) == "Paused (waiting for INIT)"
        inspector.vcpu_picker.value = 1
        inspector.save_button.click()
        assert inspector.session.wait_idle(5)
        inspector.session.refresh_now()
        summary = inspector.summary.value
        assert "MP state UNINITIALIZED (waiting for INIT)" in summary and "RIP 0xfff0" in summary, summary
        # an AP waiting for INIT sits at the reset vector, 0xfffffff0: no RAM there, and it says so
        assert "no code to show at RIP 0xfff0 (linear 0xfffffff0)" in inspector.pages["Code at RIP"].value
    finally:
        panel.close()
        inspector.close()
        m.close()


def test_smp_demo_parameters_are_checked():
    with pytest.raises(ConfigError, match=r"step_exits=0: need a whole number from 1"):
        smp_demo(step_exits=0)
    image = read_elf(smp_demo())
    assert [seg.paddr for seg in image.segments] == [0x8000, 0x100000, 0x110000] and image.entry == 0x10000C
