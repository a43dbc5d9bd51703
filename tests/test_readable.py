"""What a student reads when a notebook cell echoes kvmlab's objects and frames (issue 11,
part 6): addresses in hex that stay integers for pandas, counts as integers, and one-line
reprs that name the vCPU or the program instead of pages of dicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kvmlab import programs
from kvmlab.devices.mailbox import MAILBOX_BASE, PING
from kvmlab.metrics import MetricsRegistry, VcpuMetrics


class Peripherals:
    """What a MetricsRegistry needs of a vCPU, without a vCPU."""

    def __init__(self, index: int):
        self.metrics, self.trace = VcpuMetrics(index), None


def _registry_with_exits() -> MetricsRegistry:
    registry = MetricsRegistry([Peripherals(0), Peripherals(1)], None, sample_hz=0)
    registry.enable_trace(capacity=10)
    for index, address in ((0, MAILBOX_BASE + PING), (1, 0x3F8)):
        metrics = registry.vcpu(index)
        table = "mmio_write_by_addr" if address >= MAILBOX_BASE else "io_out_by_port"
        metrics.count_new_address(table, address)
        metrics.exit_mmio_write += 123_456
        registry.traces[index].record(1, address, 4, 7, 1, 10)
    return registry


# --- addresses: hex on screen, integers underneath ---------------------------------------------


def test_address_counts_show_hex_and_stay_integers():
    counts = _registry_with_exits().address_counts()
    shown = counts.to_string()
    assert "0xa0004" in shown and "0x3f8" in shown and "655364" not in shown, shown
    assert "0xa0004" in counts._repr_html_()
    assert counts.address.dtype == "Int64" and pd.api.types.is_integer_dtype(counts.address)
    assert counts[counts.address == 0xA0004].kind.tolist() == ["mmio_write"]
    assert int(counts.address.sum()) == 0xA0004 + 0x3F8


def test_trace_addresses_show_hex_and_stay_integers():
    trace = _registry_with_exits().trace_dataframe()
    assert "0xa0004" in trace[["vcpu", "address"]].to_string()
    assert set(trace.address) == {0xA0004, 0x3F8} and pd.api.types.is_integer_dtype(trace.address)


def test_hex_columns_survive_pandas_operations_and_files(tmp_path):
    from kvmlab.metrics import hex_array

    frame = pd.DataFrame({"address": hex_array([0x3F8, None, 0xA0000]), "n": [1, 2, 3]})
    assert "0x3f8" in frame.sort_values("address").head(2).to_string()
    assert "0xa0000" in frame.groupby("address").sum().to_string(), "a hex column keeps hex as an index"
    assert "0x3f8" in pd.concat([frame, frame]).to_string()
    frame.to_parquet(tmp_path / "f.parquet")
    back = pd.read_parquet(tmp_path / "f.parquet")
    assert back.address.dtype == "Int64" and back.address.tolist()[::2] == [0x3F8, 0xA0000]
    frame.to_csv(tmp_path / "f.csv", index=False)
    assert (tmp_path / "f.csv").read_text().splitlines()[1] == "1016,1", "files hold the integer"
    assert hex_array(np.array([5], dtype=np.uint64)).tolist() == [5]


# --- counts as integers -----------------------------------------------------------------------


def test_counts_are_integers_in_totals_current_and_timeseries():
    registry = _registry_with_exits()
    registry.start()
    registry.stop()
    totals = registry.totals()
    integer = [s.name for s in registry.specs if s.integer]
    assert all(pd.api.types.is_integer_dtype(totals[name]) for name in integer)
    assert "246912" in totals[["exit_mmio_write"]].to_string()
    now = registry.current()
    assert type(now["exit_mmio_write"]) is int and now["exit_mmio_write"] == 246_912
    assert isinstance(now["exit_mmio_write_agg.max_us"], float)
    counts = registry.to_dataframe(metrics=["exit_mmio_write", "exit_io_out"])
    assert counts["value"].dtype == np.int64 and counts["value"].max() == 246_912
    assert registry.to_dataframe(metrics=["exit_mmio_write_agg.max_us"])["value"].dtype == np.float64
    assert registry.series("exit_mmio_write", rates=False)["all"].dtype == np.int64


def test_kernel_statistics_count_in_integers():
    from kvmlab.metrics.catalog import MetricSpec

    assert MetricSpec("kvm.halt_wait_ns", "kernel", True, "sum", "ns", "").integer, "KVM's stats are u64s, whatever the unit"
    assert not MetricSpec("exit_mmio_read_agg.sum_us", "latency", True, "sum", "us", "").integer


# --- one-line reprs ---------------------------------------------------------------------------


def _one_line(text: str, *names: str) -> None:
    assert "\n" not in text and len(text) < 200, text
    for name in names:
        assert name in text, f"{name!r} not in {text!r}"


@pytest.mark.kvm
def test_snapshots_configs_and_programs_echo_in_one_line(machines):
    m = machines(vcpus=2, memory_mib=2)
    loaded = m.load(programs.mailbox_pingpong(rounds=0), mode="real")
    _one_line(repr(loaded), "mailbox_pingpong.asm", "real mode", "0x8000")
    m.start()
    m.pause()
    state = m.save_state(1)
    _one_line(repr(state), "vCPU 1", "real mode", f"RIP {state.rip:#x}")
    assert state.mode == "real"
    html = state._repr_html_()
    assert "<details>" in html and f"{state.regs['rsp']:#018x}" in html, "the registers, in hex, folded under the line"
    config = m.dump_cpu_config(0)
    _one_line(repr(config), "vCPU 0", f"{len(config.cpuid)} CPUID leaves", f"{len(config.msrs)} MSRs")
    assert "<details>" in config._repr_html_()
    _one_line(repr(config.cpuid[0]), "0x0.0", "eax=0x")


def test_boot_images_ranges_and_modes_echo_in_hex():
    from kvmlab.guest import kernels
    from kvmlab.guest.modes import EntryPoint, Mode
    from kvmlab.guest.multiboot import plan
    from kvmlab.vstate.layout import Range

    image = plan(kernels.smp_demo(), "smp_demo.elf")
    _one_line(repr(image), "smp_demo.elf", f"entry {image.entry:#x}")
    assert repr(Range(0xA0000, 0xA1000)) == "Range(0xa0000, 0xa1000)"
    assert repr(EntryPoint(Mode.LONG, 0x8000)) == "EntryPoint(long, 0x8000)"
