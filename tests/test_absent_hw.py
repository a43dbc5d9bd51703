"""Absent hardware behaves as on a PC, quietly (issue 10, part 9).

A guest that probes hardware kvmlab does not have sees what a PC shows: an empty PCI bus
behind the host bridge at 0xcf8/0xcfc (every configuration read all ones), open bus (all
ones, writes dropped) at ports and MMIO addresses no device decodes. ``kvmlab boot`` says
nothing on stderr about it (QEMU-style test runners count any stderr line without "warning"
as a VMM failure); ``--verbose`` names each distinct access; ``Machine(strict=True)`` stops
the vCPU at the first one. The kernel is ``tests/kernels/absent.s``: exit code 0 when every
check read what a PC shows, else the number of the first check that did not."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from kvmlab.devices.pci_host import PCI_CONFIG_PORT, PciHost, decode
from kvmlab.errors import ConfigError
from kvmlab.guest.programs import Program
from kvmlab.lab.absent import absent_summary
from kvmlab.metrics.counters import ABSENT_COUNTERS
from kvmlab.vstate.unhandled import strict_reason


COM2, NOBODY_PORT, ABSENT_MMIO = 0x2F8, 0xC000, 0xC000_0000
PASSED = "absent hardware: every check saw what a PC shows\n"
#: what absent.s does that reaches no device, by counter
ABSENT_COUNTS = {"absent_io_read": 3, "absent_io_write": 1, "absent_mmio_read": 3, "absent_mmio_write": 1}
#: the distinct absent accesses (kind, address) it makes, one --verbose line each
DISTINCT = [("port in", COM2), ("port out", COM2), ("port in", NOBODY_PORT),
            ("MMIO read", ABSENT_MMIO), ("MMIO read", ABSENT_MMIO + 1), ("MMIO write", ABSENT_MMIO)]  # fmt: skip


def kvmlab_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmlab", *args], capture_output=True, text=True, timeout=120)


def kvmlab_boot(*args: str) -> subprocess.CompletedProcess:
    return kvmlab_command("boot", *args)


def boot_absent(machines, kernels, engine: str, **kwargs):
    """A one-vCPU machine that has run absent.s to its end."""
    m = machines(vcpus=1, memory_mib=8, engine=engine, **kwargs)
    m.boot(kernels.absent)
    m.start()
    m.wait(timeout=30)
    return m


# --- kvmlab boot: a PC's answers, nothing on stderr ----------------------------------------------------


@pytest.mark.kvm
def test_kvmlab_boot_of_a_probing_kernel_passes_with_nothing_on_stderr(kernels):
    """Before: check 1 failed (CONFIG_ADDRESS read back 0xffffffff; no host bridge), exit
    status (1 << 1) | 1 = 3, and a warning line on stderr per port touched."""
    result = kvmlab_boot(str(kernels.absent))
    assert result.stdout == PASSED
    assert result.returncode == (0 << 1) | 1 == 1, "QEMU's debug-exit status for code 0"
    assert result.stderr == ""


@pytest.mark.kvm
def test_kvmlab_boot_verbose_names_each_distinct_absent_access_once(kernels):
    """Before: no --verbose option (usage error, exit status 2)."""
    result = kvmlab_boot(str(kernels.absent), "--verbose")
    assert result.returncode == 1 and result.stdout == PASSED, result.stderr
    absent = [line for line in result.stderr.splitlines() if "reached no device" in line]
    for kind, address in DISTINCT:
        assert sum(f" {kind} " in line and line.split(" reached")[0].endswith(f"{address:#x}") for line in absent) == 1, (kind, address, result.stderr)
    assert len(absent) == len(DISTINCT)
    assert all(line.startswith("kvmlab boot: info: vCPU 0: ") for line in absent), absent


@pytest.mark.kvm
def test_kvmlab_run_is_quiet_about_absent_hardware_unless_verbose(tmp_path):
    """Before: a WARNING line on stderr without --verbose; --verbose was a usage error."""
    program = tmp_path / "com2.asm"
    program.write_text("mov dx, 0x2f8\nin al, dx\nhlt\n")
    quiet, verbose = (kvmlab_command("run", str(program), *extra) for extra in ((), ("--verbose",)))
    assert quiet.returncode == verbose.returncode == 0, verbose.stderr
    assert quiet.stderr == ""
    assert "kvmlab run: info: vCPU 0: port in (read) of 1 byte at port 0x2f8 reached no device" in verbose.stderr


# --- the same values on both engines, counted ------------------------------------------------------------


def test_a_probing_kernel_reads_what_a_pc_shows_and_every_absent_access_is_counted(engine, machines, kernels, caplog):
    """Before, on both engines: exit code 1 (check 1: no host bridge; MMIO read zeros), no
    absent_* counters, a WARNING per access."""
    with caplog.at_level(logging.DEBUG, logger="kvmlab"):
        m = boot_absent(machines, kernels, engine)
    assert m.console.text == PASSED and m.exit == 0
    totals = m.metrics.totals()
    assert {name: int(totals.at["0", name]) for name in ABSENT_COUNTERS} == ABSENT_COUNTS
    assert int(totals.at["0", "unhandled_accesses"]) == sum(ABSENT_COUNTS.values())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "absent hardware is no warning"
    logged = [r for r in caplog.records if "reached no device" in r.getMessage()]
    assert len(logged) == len(DISTINCT) and {r.levelno for r in logged} == {logging.INFO}, "one info line per distinct access"

    counts = m.metrics.address_counts()
    rows = {(kind, address): (device, register, n) for kind, address, device, register, n in
            zip(counts.kind, counts.address, counts.device, counts.register, counts["count"])}  # fmt: skip
    assert rows[("io_out", PCI_CONFIG_PORT)] == ("pci-host", "CONFIG_ADDRESS", 32), "the bridge is a device in the tables"
    assert rows[("io_in", PCI_CONFIG_PORT + 4)] == ("pci-host", "CONFIG_DATA", 33)
    assert rows[("io_in", PCI_CONFIG_PORT + 6)] == ("pci-host", "CONFIG_DATA+2", 1)
    assert rows[("io_in", COM2)][2] == 2 and rows[("io_in", NOBODY_PORT)][2] == 1
    assert rows[("mmio_read", ABSENT_MMIO)][2] == 2 and rows[("mmio_write", ABSENT_MMIO)][2] == 1
    assert m.pci_host.selected == decode(0x8000_0000 | 31 << 11), "the last slot the scan selected"


@pytest.mark.kvm
@pytest.mark.emulated
def test_both_engines_count_the_same_absent_accesses(machines, kernels):
    """Before: the emulated engine's run ended at check 1 as KVM's did; no counters to compare."""
    kvm, emulated = (boot_absent(machines, kernels, engine) for engine in ("kvm", "emulated"))
    for name in ABSENT_COUNTERS:
        assert getattr(kvm.metrics[0], name) == getattr(emulated.metrics[0], name) == ABSENT_COUNTS[name], name
    assert kvm.metrics[0].io_in_by_port == emulated.metrics[0].io_in_by_port
    assert kvm.metrics[0].mmio_read_by_addr == emulated.metrics[0].mmio_read_by_addr


# --- strict: the first absent access stops the vCPU ------------------------------------------------------


def test_strict_machine_stops_at_the_first_absent_access_naming_it(engine, machines, kernels):
    """Before: Machine() had no strict keyword (TypeError)."""
    m = boot_absent(machines, kernels, engine, strict=True)
    assert int(m.exit) == 1 and m.debug_exit.last_code is None, "stopped by kvmlab, not by the guest"
    assert m.exit.reason == f"vCPU 0: {strict_reason('port in', COM2, 1)}"
    assert m.metrics[0].absent_io_read == 1 and m.metrics[0].absent_mmio_read == 0, "nothing ran after it"
    assert m.console.text == "", "the PCI probes before it were answered: none of them failed a check"


def test_strict_step_returns_the_error_record(engine, machines):
    """``step()`` shows the same error, with the MMIO write's address and size. Before:
    Machine() had no strict keyword (TypeError)."""
    m = machines(vcpus=1, memory_mib=2, engine=engine, strict=True)
    m.load(Program("poke", "mov edx, ABSENT\nmov dword ptr [edx], eax\nhlt\n", params={"ABSENT": ABSENT_MMIO}), mode="protected")
    record = m.step()
    assert record.outcome == ("stopped: MMIO write of 4 bytes at 0xc0000000 reached no device, and the machine is "
                              "strict (Machine(strict=True)); without strict the write is dropped, as on a PC")  # fmt: skip


def test_strict_must_be_a_bool(machines):
    """Before: Machine() had no strict keyword (TypeError, not ConfigError)."""
    with pytest.raises(ConfigError, match="strict='yes': True or False"):
        machines(strict="yes")


def test_the_strict_reason_names_address_size_and_direction():
    """Before: no ``strict_reason`` (ImportError)."""
    assert strict_reason("port in", 0x60, 2) == (
        "port in (read) of 2 bytes at port 0x60 reached no device, and the machine is strict "
        "(Machine(strict=True)); without strict it reads all ones, as on a PC")  # fmt: skip
    assert strict_reason("MMIO write", 0xFED0_0000, 8).startswith("MMIO write of 8 bytes at 0xfed00000 reached no device")


# --- the PCI host bridge on its own ---------------------------------------------------------------------


def test_pci_host_config_address_fields_and_empty_bus():
    """Before: no ``kvmlab.devices.pci_host`` (ImportError)."""
    host = PciHost()
    host.write(0, 4, 0x8001_2A0C)
    assert host.read(0, 4) == 0x8001_2A0C
    assert decode(0x8001_2A0C) == (True, 1, 5, 2, 0x0C)
    for offset, size, ones in ((4, 4, 0xFFFFFFFF), (4, 2, 0xFFFF), (6, 2, 0xFFFF), (7, 1, 0xFF)):
        assert host.read(offset, size) == ones, "no device: a master abort reads all ones"
    host.write(4, 4, 0)
    assert host.read(4, 4) == 0xFFFFFFFF, "configuration writes go nowhere"
    host.write(1, 1, 0x06)  # 0xcf9: not CONFIG_ADDRESS (only a dword at 0xcf8 is); plain I/O, nobody there
    assert host.read(0, 4) == 0x8001_2A0C and host.read(1, 1) == 0xFF


# --- the Lab's line -------------------------------------------------------------------------------------


def test_the_lab_sums_absent_accesses_in_one_line(engine, machines, kernels):
    """Before: no ``kvmlab.lab.absent`` (ImportError), no line in the control panel."""
    from kvmlab.widgets import ControlPanel

    m = boot_absent(machines, kernels, engine)
    assert absent_summary(m.metrics) == "absent hardware: 3 port reads, 1 port write, 3 MMIO reads, 1 MMIO write"
    panel = ControlPanel(m)
    panel.session.refresh_now()
    assert "absent hardware: 3 port reads, 1 port write, 3 MMIO reads, 1 MMIO write" in panel.absent.value
    panel.close()


def test_the_lab_line_is_empty_without_absent_accesses(engine, machines):
    """Before: no ``kvmlab.lab.absent`` (ImportError)."""
    from kvmlab import programs

    m = machines(vcpus=1, engine=engine, sample_hz=0)
    m.load(programs.exit_code(0), mode="real")
    m.start()
    m.wait(10)
    assert absent_summary(m.metrics) == ""
