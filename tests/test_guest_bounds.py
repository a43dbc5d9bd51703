"""A guest must not grow host memory without bound (issue 9, defect 3): a guest sweeping over
unmapped MMIO touches a new address on every access, and what kvmlab remembers per address
(the per-address exit counts, the addresses already warned about) is capped per machine,
counts every exit exactly, and dies with the machine. On both engines. (Absent hardware is
logged at info level, once per address: ``tests/test_absent_hw.py`` has why.)"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from kvmlab.guest.programs import Program
from kvmlab.metrics import ADDRESS_LIMIT, OTHER_ADDRESSES
from kvmlab.vstate.unhandled import WARNED_LIMIT

#: below 4 GiB, no RAM and no device: every access there is an unhandled MMIO exit
SWEEP_BASE = 0xC000_0000
#: ports from here up have no device (serial 0x3f8, debug-exit 0xf4 and fw_cfg 0x510 are below)
PORT_BASE = 0x1000
MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]

SWEEP_SOURCE = """
; Writes, then reads back, each dword of [SWEEP, SWEEP + 4 * COUNT): two exits per address,
; every address a new one. Then one OUT to each of PORTS ports from PORT_BASE.
    mov edx, SWEEP
    mov ecx, COUNT
next:
    mov dword ptr [edx], ecx
    mov eax, dword ptr [edx]
    add edx, 4
    dec ecx
    jnz next
    mov ecx, PORTS
    jecxz done
    mov edx, PORT_BASE
port:
    out dx, al
    inc edx
    dec ecx
    jnz port
done:
    hlt
"""


def sweep(machines, engine: str, count: int, ports: int = 0):
    """A machine (made by ``machines``) that has run the sweep over ``count`` addresses (and
    ``ports`` ports) to its HLT."""
    m = machines(vcpus=1, memory_mib=2, engine=engine, sample_hz=0)
    params = {"SWEEP": SWEEP_BASE, "COUNT": count, "PORT_BASE": PORT_BASE, "PORTS": ports}
    m.load(Program("sweep", SWEEP_SOURCE, params=params), mode="protected")
    m.start()
    assert m.wait(300) == 0
    return m


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_growth_of_sweep(engine: str, count: int) -> int:
    """RSS growth of this process while one machine sweeps ``count`` addresses; run in a fresh
    process (memory an earlier test freed would hide the growth), logging off (what kvmlab
    keeps is measured, not what a log handler keeps)."""
    from kvmlab import Machine

    logging.disable(logging.CRITICAL)
    with sweep(Machine, engine, 64):  # the engine's own first-use allocations are not the guest's
        pass
    before = rss_bytes()
    with sweep(Machine, engine, count) as m:
        assert m.metrics[0].exit_mmio_write == count
        return rss_bytes() - before


def test_address_tables_keep_at_most_the_limit_and_fold_the_rest_exactly(engine, machines, caplog):
    count = 3 * ADDRESS_LIMIT
    with caplog.at_level(logging.INFO, logger="kvmlab.vcpu"):
        m = sweep(machines, engine, count, ports=count)
    metrics = m.metrics[0]
    assert metrics.exit_mmio_write == metrics.exit_mmio_read == metrics.exit_io_out == count
    assert metrics.unhandled_accesses == 3 * count
    for table, first in (("mmio_write_by_addr", SWEEP_BASE), ("mmio_read_by_addr", SWEEP_BASE), ("io_out_by_port", PORT_BASE)):
        kept = getattr(metrics, table)
        assert len(kept) == ADDRESS_LIMIT, "the first addresses are kept, no more"
        assert min(kept) == first and set(kept.values()) == {1}
        assert sum(kept.values()) + metrics.other_addresses[table] == count, "every exit counted once"
        assert metrics.other_addresses[table] == count - ADDRESS_LIMIT

    frame = m.metrics.address_counts()
    other = frame[frame.device == OTHER_ADDRESSES]
    assert sorted(other.kind) == ["io_out", "mmio_read", "mmio_write"] and (other["count"] == count - ADDRESS_LIMIT).all()
    assert other.address.isna().all(), "the folded row stands for many addresses, so it has none"
    assert frame.groupby("kind", observed=True)["count"].sum().to_dict() == {"io_out": count, "mmio_read": count, "mmio_write": count}
    assert len(frame) == 3 * (ADDRESS_LIMIT + 1)

    lines = [r.getMessage() for r in caplog.records if r.name == "kvmlab.vcpu" and "reached no device" in r.getMessage()]
    assert len(m._vmm.vm.unhandled) == WARNED_LIMIT and m._vmm.vm.unhandled.quiet
    assert sum(" MMIO " in line for line in lines) == WARNED_LIMIT
    assert sum("no more lines" in line for line in lines) == 1, "says once that it goes quiet"
    assert len(lines) == WARNED_LIMIT + 1


def test_each_machine_warns_for_itself_and_leaves_nothing_behind(engine, machines, caplog):
    first = f"MMIO write of 4 bytes at {SWEEP_BASE:#x} reached no device"
    for machine in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="kvmlab.vcpu"):
            m = sweep(machines, engine, 4)
            m.close()
        lines = [r.getMessage() for r in caplog.records if r.name == "kvmlab.vcpu" and "reached no device" in r.getMessage()]
        assert sum(first in line for line in lines) == 1, f"machine {machine} logs its own first access"
        assert len(lines) == 8, "one line per address and kind"
    keys = {SWEEP_BASE, ("MMIO write", SWEEP_BASE), ("MMIO read", SWEEP_BASE)}
    for name, module in list(sys.modules.items()):
        if name.startswith("kvmlab"):
            for value in list(vars(module).values()):
                if isinstance(value, (set, frozenset, dict)):
                    assert not keys & set(value), f"{name} keeps a closed machine's guest addresses"


def test_a_long_sweep_does_not_grow_host_memory(engine):
    """Unbounded, this sweep grew RSS by ~75 MiB on either engine (~390 bytes per address);
    bounded, by ~1 MiB. The bound is generous: the full tables fit in it many times."""
    probe = f"from tests.test_guest_bounds import rss_growth_of_sweep; print(rss_growth_of_sweep({engine!r}, 200_000))"
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    growth = int(run.stdout.split()[-1])
    assert growth < 32 * MIB, f"RSS grew by {growth / MIB:.1f} MiB"
