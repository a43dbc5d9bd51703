"""The metrics registry on real KVM: exactness against the kernel and the guest's own counts,
sampling, DataFrames, the exit trace and the exports."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import threading
import time

import numpy as np
import pandas as pd
import pytest

from kvmlab import programs
from kvmlab.devices.mailbox import COUNTERS, MAILBOX_BASE
from kvmlab.metrics import ExportError, ExportWriteError, MetricsRegistry
from kvmlab.metrics.ring import RingBuffer

from .nobody import as_nobody
from .tinydisk import CHUNK, fill_up, names_in

pytestmark = pytest.mark.kvm

MODES = ["real", "protected", "long"]


def run_to_end(machines, program, mode="protected", vcpus=2, **kwargs):
    m = machines(vcpus=vcpus, memory_mib=2, **kwargs)
    m.load(program, mode=mode)
    m.start()
    assert m.wait(30) == 0
    return m


@pytest.mark.parametrize("mode", MODES)
def test_mmio_counters_equal_the_kernel_and_the_guest(machines, mode):
    m = run_to_end(machines, programs.mmio_counter(iterations=2500, read_every=4), mode)
    totals = m.metrics.totals()
    for i in range(2):
        ours = m.metrics.vcpu(i)
        kernel = m.metrics.current(i)
        guest = m.results(i)
        assert ours.exit_mmio_read + ours.exit_mmio_write == kernel["kvm.mmio_exits"], "kvmlab == KVM's mmio_exits"
        assert (ours.exit_mmio_write, ours.exit_mmio_read) == (guest["mmio_writes"], guest["mmio_reads"]), "kvmlab == the guest's tally"
        assert ours.exit_hlt == kernel["kvm.halt_exits"] == 1
        assert totals.loc[str(i), "kvm.mmio_exits"] == 2500 + 625
    assert totals.loc["all", "exit_mmio_write"] == 5000
    assert totals.loc["all", "kvm.mmio_exits"] == 2 * (2500 + 625)


def test_pingpong_counters_equal_the_kernel_and_the_guest(machines):
    m = run_to_end(machines, programs.mailbox_pingpong(rounds=300), "long")
    for i in range(2):
        ours = m.metrics.vcpu(i)
        assert ours.exit_mmio_read + ours.exit_mmio_write == m.metrics.current(i)["kvm.mmio_exits"]
        assert ours.exit_mmio_read == m.results(i)["polls"] and ours.exit_mmio_write == 300


def test_unknown_names_list_the_valid_ones(machines):
    m = machines(vcpus=2)
    with pytest.raises(KeyError, match="vCPU 2 is not in this machine; valid vCPUs: 0, 1"):
        m.metrics.vcpu(2)
    with pytest.raises(KeyError, match="no metric 'exit_mmio_writes'; valid metrics: exit_mmio_read, exit_mmio_write"):
        m.metrics.to_dataframe(metrics=["exit_mmio_writes"])
    with pytest.raises(KeyError, match="valid vCPUs: 0, 1"):
        m.metrics.to_dataframe(vcpus=["7"])


def test_totals_has_a_row_per_vcpu_and_all(machines):
    m = run_to_end(machines, programs.mmio_counter(iterations=800), "real")
    totals = m.metrics.totals()
    assert list(totals.index) == ["0", "1", "all"] and totals.index.name == "vcpu"
    assert totals["exit_mmio_write"].tolist() == [800, 800, 1600]
    assert totals["exit_mmio_write"].dtype == np.int64
    agg = totals[["exit_mmio_write_agg.count", "exit_mmio_write_agg.min_us", "exit_mmio_write_agg.max_us", "exit_mmio_write_agg.sum_us"]]
    assert agg.loc["all", "exit_mmio_write_agg.min_us"] == agg.loc[["0", "1"], "exit_mmio_write_agg.min_us"].min()
    assert agg.loc["all", "exit_mmio_write_agg.max_us"] == agg.loc[["0", "1"], "exit_mmio_write_agg.max_us"].max()
    assert 0 < agg.loc["0", "exit_mmio_write_agg.min_us"] <= agg.loc["0", "exit_mmio_write_agg.max_us"]
    assert np.isnan(totals.loc["0", "exit_io_in_agg.min_us"]), "no port reads: no minimum, not 0"


def test_sampler_runs_with_the_machine_into_a_bounded_ring(machines):
    m = machines(vcpus=2, sample_hz=50, history_s=0.3)
    m.load(programs.mmio_counter(iterations=0), mode="protected")
    assert not m.metrics.sampler.running
    m.start()
    assert m.metrics.sampler.running
    time.sleep(0.6)
    assert m.metrics.samples == 15, "history_s * sample_hz rows, the oldest overwritten"
    m.stop()
    assert not m.metrics.sampler.running and not [t for t in threading.enumerate() if t.name == "kvmlab sampler"]
    frame = m.metrics.to_dataframe(metrics=["exit_mmio_write"], vcpus=["0"])
    assert frame["elapsed_s"].is_monotonic_increasing
    assert frame["elapsed_s"].iloc[-1] - frame["elapsed_s"].iloc[0] == pytest.approx(0.28, abs=0.1)
    # the last sample is taken after the stop, so it equals the final counters
    assert frame["value"].iloc[-1] == m.metrics.vcpu(0).exit_mmio_write


def test_tidy_dataframe_shape_and_types(machines):
    m = machines(vcpus=2, sample_hz=20)
    m.load(programs.mmio_counter(iterations=0), mode="long")
    m.start()
    time.sleep(0.5)
    m.stop()
    frame = m.metrics.to_dataframe()
    assert list(frame.columns) == ["t", "elapsed_s", "vcpu", "metric", "value"]
    assert str(frame["t"].dtype) == "datetime64[ns, UTC]"
    assert frame["elapsed_s"].dtype == np.float64 and frame["value"].dtype == np.float64
    assert isinstance(frame["vcpu"].dtype, pd.CategoricalDtype) and list(frame["vcpu"].cat.categories) == ["0", "1", "all"]
    assert isinstance(frame["metric"].dtype, pd.CategoricalDtype) and "kvm.mmio_exits" in frame["metric"].cat.categories
    assert len(frame) == m.metrics.samples * 3 * len(m.metrics.names)
    now = pd.Timestamp.now(tz="UTC")
    assert (now - frame["t"].max()) < pd.Timedelta(seconds=5)
    wide = frame[frame.metric == "exit_mmio_write"].pivot_table(index="elapsed_s", columns="vcpu", values="value", observed=True)
    assert (wide["all"] == wide["0"] + wide["1"]).all(), "'all' is the sum of the vCPUs"


def test_rates_integrate_back_to_the_counts(machines):
    m = machines(vcpus=2, sample_hz=20)
    m.load(programs.mmio_counter(iterations=0), mode="protected")
    m.start()
    time.sleep(0.6)
    m.stop()
    counts = m.metrics.to_dataframe(metrics=["exit_mmio_write"], vcpus=["0"])
    rates = m.metrics.to_dataframe(rates=True, metrics=["exit_mmio_write", "exit_mmio_write_agg.min_us"], vcpus=["0"])
    assert set(rates["metric"].unique()) == {"exit_mmio_write"}, "no rate of a minimum"
    dt = np.diff(counts["elapsed_s"].to_numpy())
    integral = float((rates["value"].to_numpy() * dt).sum())
    assert integral == pytest.approx(counts["value"].iloc[-1] - counts["value"].iloc[0], rel=1e-9)
    assert rates["value"].median() > 100, "a running vCPU writes the mailbox many times a second"


def test_a_paused_vcpu_rate_falls_to_zero(machines):
    m = machines(vcpus=2, sample_hz=20)
    m.load(programs.mmio_counter(iterations=0), mode="real")
    m.start()
    time.sleep(0.3)
    m.pause(1)
    time.sleep(0.5)
    series = m.metrics.series("exit_mmio_write", last_s=0.3)
    assert (series["1"] == 0).all(), "the paused vCPU makes no exits"
    assert series["0"].median() > 100, "vCPU 0 keeps running (~50,000/s idle; one late sample under load may read 0)"


def test_trace_has_one_row_per_exit(machines):
    m = run_to_end(machines, programs.mmio_counter(iterations=300, read_every=4), "real", vcpus=2, trace=True)
    trace = m.metrics.trace_dataframe()
    assert list(trace.columns) == ["t", "elapsed_s", "vcpu", "reason", "address", "size", "data", "latency_us"]
    assert trace["t"].is_monotonic_increasing
    for i in range(2):
        rows = trace[trace.vcpu == str(i)]
        writes = rows[rows.reason == "mmio_write"]
        assert len(writes) == 300 and len(rows[rows.reason == "mmio_read"]) == 75 and len(rows[rows.reason == "hlt"]) == 1
        assert writes["data"].tolist() == list(range(1, 301)), "the guest wrote 1, 2, 3, ..."
        assert (writes["address"] == MAILBOX_BASE + COUNTERS + 4 * i).all() and (writes["size"] == 4).all()
        assert (writes["latency_us"] > 0).all()
        reads = rows[rows.reason == "mmio_read"]
        assert reads["data"].tolist() == list(range(4, 301, 4)), "each read saw the last write"
    assert trace.attrs["dropped"] == {0: 0, 1: 0}


def test_a_full_trace_drops_the_oldest_and_counts_them(machines):
    m = run_to_end(machines, programs.mmio_counter(iterations=500, read_every=1024), "protected", vcpus=1, trace=True, trace_capacity=100)
    trace = m.metrics.trace_dataframe()
    assert len(trace) == 100 and trace.attrs["dropped"] == {0: 401}, "500 writes + 1 HLT, 100 kept"
    writes = trace[trace.reason == "mmio_write"]
    assert writes["data"].tolist() == list(range(402, 501)), "the newest rows are the ones kept"


def test_trace_can_be_switched_on_and_off(machines):
    m = machines(vcpus=1)
    m.load(programs.mmio_counter(iterations=0), mode="protected")
    m.start()
    assert len(m.metrics.trace_dataframe()) == 0
    m.metrics.enable_trace(capacity=1000)
    time.sleep(0.1)
    m.metrics.disable_trace()
    taken = len(m.metrics.trace_dataframe())
    time.sleep(0.1)
    assert 0 < taken == len(m.metrics.trace_dataframe()) <= 1000


def test_kicks_and_port_io_show_in_the_trace(machines):
    m = run_to_end(machines, programs.hello(), "protected", vcpus=1, trace=True)
    trace = m.metrics.trace_dataframe()
    outs = trace[trace.reason == "io_out"]
    assert bytes(outs["data"].astype(int).tolist()).decode() == "Hello from vCPU 0\n"
    assert set(outs["address"]) == {0x3F8} and set(trace[trace.reason == "io_in"]["address"]) == {0x3FD}


def test_address_counts_name_the_device_register(machines):
    m = run_to_end(machines, programs.mmio_counter(iterations=400, read_every=8), "long")
    counts = m.metrics.address_counts()
    assert list(counts.columns) == ["vcpu", "kind", "address", "device", "register", "count"]
    top = counts[(counts.vcpu == "1") & (counts.kind == "mmio_write")].iloc[0]
    assert (top.device, top.register, top["count"], top.address) == ("mailbox", "COUNTER1", 400, 0xA0104)


def test_csv_and_parquet_round_trip(machines, tmp_path):
    m = run_to_end(machines, programs.mmio_counter(iterations=300), "real", trace=True)
    frame = m.metrics.to_dataframe()
    m.metrics.write_csv(tmp_path / "metrics.csv")
    back = pd.read_csv(tmp_path / "metrics.csv")
    assert len(back) == len(frame) and back["value"].sum() == pytest.approx(frame["value"].sum(), nan_ok=True)
    m.metrics.write_parquet(tmp_path / "metrics.parquet")
    back = pd.read_parquet(tmp_path / "metrics.parquet")
    pd.testing.assert_frame_equal(back, frame)
    m.metrics.export(tmp_path / "trace.parquet", what="trace")
    assert len(pd.read_parquet(tmp_path / "trace.parquet")) == len(m.metrics.trace_dataframe())
    m.metrics.export(tmp_path / "totals.csv", what="totals")
    assert pd.read_csv(tmp_path / "totals.csv")["vcpu"].astype(str).tolist() == ["0", "1", "all"]


def test_json_lines_use_firecracker_names_and_deltas(machines, tmp_path):
    m = machines(vcpus=2)
    m.load(programs.mmio_counter(iterations=0), mode="protected")
    m.start()
    path = tmp_path / "metrics.jsonl"
    time.sleep(0.1)
    m.metrics.write_json_lines(path)
    time.sleep(0.1)
    m.pause()
    m.metrics.write_json_lines(path)
    m.metrics.write_json_lines(path)  # nothing ran since: zero deltas
    first, second, third = (json.loads(line) for line in path.read_text().splitlines())
    assert set(first) == {"utc_timestamp_ms", "vcpu", "vcpus", "irq_lines"}
    assert first["irq_lines"]["line_raises"] == 0 and "irqfd_triggers" in first["irq_lines"]  # the machine's, once
    assert abs(first["utc_timestamp_ms"] - time.time() * 1000) < 5000
    fc = first["vcpu"]
    assert {"exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write", "failures"} <= set(fc)
    assert set(fc["exit_mmio_write_agg"]) == {"min_us", "max_us", "sum_us"}
    total_writes = first["vcpu"]["exit_mmio_write"] + second["vcpu"]["exit_mmio_write"]
    assert total_writes == m.metrics.current()["exit_mmio_write"], "deltas add up to the total"
    assert second["vcpus"]["0"]["exit_mmio_write"] > 0 and second["vcpus"]["1"]["kvm"]["mmio_exits"] > 0
    assert third["vcpu"]["exit_mmio_write"] == 0 and third["vcpu"]["exit_mmio_write_agg"] == {"min_us": 0.0, "max_us": 0.0, "sum_us": 0.0}
    window = second["vcpus"]["0"]["exit_mmio_write_agg"]
    assert 0 < window["min_us"] <= window["max_us"]


def test_json_lines_can_flush_periodically(machines, tmp_path):
    m = machines(vcpus=1, sample_hz=50)
    m.load(programs.mmio_counter(iterations=0), mode="protected")
    m.start()
    path = tmp_path / "periodic.jsonl"
    m.metrics.write_json_lines(path, every_s=0.1)
    time.sleep(0.55)
    m.metrics.stop_json_lines(path)
    lines = path.read_text().splitlines()
    time.sleep(0.2)
    assert 5 <= len(lines) <= 8 and len(path.read_text().splitlines()) == len(lines)


@pytest.mark.parametrize(
    "name, message",
    [
        ("no-such-folder/m.csv", "the folder .* does not exist; create it first"),
        ("m.xlsx", "unknown extension '.xlsx'; use one of .csv, .parquet, .jsonl"),
        ("m", "unknown extension '\\(none\\)'"),
    ],
)
def test_bad_export_paths_fail_before_any_work(machines, tmp_path, name, message):
    m = machines(vcpus=1)
    with pytest.raises(ExportError, match=message):
        m.metrics.export(tmp_path / name)
    assert list(tmp_path.iterdir()) == []


class FakePeripherals:
    def __init__(self, index):
        from kvmlab.metrics import VcpuMetrics

        self.metrics, self.trace = VcpuMetrics(index), None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_unwritable_export_folder():
    import shutil
    import tempfile
    from pathlib import Path

    registry = MetricsRegistry([FakePeripherals(0)], None)
    folder = Path(tempfile.mkdtemp(dir="/tmp"))  # reachable by anyone, writable by root only
    folder.chmod(0o755)
    def export() -> str:  # nobody may not write a root-owned 0755 folder
        registry.export(folder / "metrics.csv")
        return "written"

    message = as_nobody(export)
    assert "is not writable by this user" in message, message
    assert list(folder.iterdir()) == []
    shutil.rmtree(folder)


def test_parquet_without_pyarrow_says_what_to_install(machines, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("no pyarrow")
        return real_import(name, *args, **kwargs)

    m = machines(vcpus=1)
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(ExportError, match=r"pip install 'kvmlab\[parquet\]'"):
        m.metrics.export(tmp_path / "m.parquet")


def test_addresses_beyond_the_limit_are_one_readable_row_in_the_export(tmp_path):
    from kvmlab.metrics import ADDRESS_LIMIT, OTHER_ADDRESSES

    registry = MetricsRegistry([FakePeripherals(0)], None)
    metrics = registry.vcpu(0)
    for port in range(ADDRESS_LIMIT + 10):  # what the exit path does for each new port
        metrics.count_new_address("io_in_by_port", port)
    assert len(metrics.io_in_by_port) == ADDRESS_LIMIT and metrics.other_addresses["io_in_by_port"] == 10
    exported = pd.read_csv(registry.export(tmp_path / "addresses.csv", what="addresses"))
    assert len(exported) == ADDRESS_LIMIT + 1 and exported["count"].sum() == ADDRESS_LIMIT + 10
    other = exported[exported.device == OTHER_ADDRESSES]
    assert other[["kind", "count"]].values.tolist() == [["io_in", 10]] and other.address.isna().all()


def test_registry_without_kernel_stats_says_so():
    registry = MetricsRegistry([FakePeripherals(0), FakePeripherals(1)], None)
    assert not [n for n in registry.names if n.startswith("kvm.")]
    assert registry.kernel_stats_absent == "this engine has no KVM binary stats fd"
    registry.vcpu(1).exit_io_out += 3
    assert registry.totals().loc["all", "exit_io_out"] == 3


# --- one consistent snapshot of the ring, whatever the sampler does meanwhile ----------------------


class RingSampledOnFirstRead(RingBuffer):
    """A ring that takes a sample right after its first read, as the sampler thread may at any
    moment: anything that reads the ring twice sees two different histories."""

    def __init__(self, columns: int, capacity: int, on_first_read):
        super().__init__(columns, capacity)
        self._on_first_read = on_first_read

    def array(self):
        rows = super().array()
        hook, self._on_first_read = self._on_first_read, None
        if hook is not None:
            hook()
        return rows


def registry_with_samples(samples: int, capacity: int) -> MetricsRegistry:
    """A started registry of one fake vCPU holding ``samples`` samples, exit_io_out = the
    square of each sample's number (so counts and rates tell samples apart); its ring takes
    one more sample right after the first read."""
    registry = MetricsRegistry([FakePeripherals(0)], None, sample_hz=0)

    def sample(number: int) -> None:
        registry.vcpu(0).exit_io_out = number * number
        registry.sample()

    registry.ring = RingSampledOnFirstRead(registry.ring.columns, capacity, lambda: sample(samples + 1))
    registry.vcpu(0).exit_io_out = 1
    registry.start()
    for number in range(2, samples + 1):
        time.sleep(0.001)  # distinct elapsed times, so rates exist
        sample(number)
    return registry


def sampled_pairs(frame: pd.DataFrame) -> set[tuple]:
    return set(zip(frame["t"], frame["elapsed_s"], frame["vcpu"], frame["metric"], frame["value"]))


@pytest.mark.parametrize("rates", [False, True])
@pytest.mark.parametrize("samples, capacity", [(3, 8), (6, 4)], ids=["ring-not-full", "ring-full"])
def test_a_sample_taken_during_to_dataframe_does_not_mix_two_histories(samples, capacity, rates):
    registry = registry_with_samples(samples, capacity)
    racy = registry.to_dataframe(rates=rates, metrics=["exit_io_out"])  # a sample comes in meanwhile
    assert registry.samples == min(samples + 1, capacity), "the sample was taken during the call"
    settled = registry.to_dataframe(rates=rates, metrics=["exit_io_out"])  # nothing comes in now
    assert len(racy) in (len(settled), len(settled) - 2), "the history before or after the sample (2 rows: 0 and all)"
    still_kept = set(settled["elapsed_s"])  # a full ring has dropped the oldest sample since
    shown = {row for row in sampled_pairs(racy) if row[1] in still_kept}
    assert shown and shown <= sampled_pairs(settled), "each value with the time it was sampled at"


def test_a_full_ring_keeps_each_value_with_its_own_timestamp():
    registry = registry_with_samples(6, 4)  # the ring keeps samples 3 to 6; 7 comes in during the read
    frame = registry.to_dataframe(metrics=["exit_io_out"], vcpus=["0"])
    after = registry.ring.array()  # samples 4 to 7: wall ns, elapsed s, then vCPU 0's metrics
    sampled_at = dict(zip(after[:, 2 + registry.names.index("exit_io_out")], after[:, 0].astype("int64")))
    assert frame["value"].tolist() in ([9.0, 16.0, 25.0, 36.0], [16.0, 25.0, 36.0, 49.0])
    shown = {value: t.value for value, t in zip(frame["value"], frame["t"]) if value in sampled_at}
    assert shown == {value: sampled_at[value] for value in shown}, "each value at the time it was sampled"


def test_last_s_keeps_the_samples_of_those_seconds_and_rates_use_the_one_before():
    registry = MetricsRegistry([FakePeripherals(0)], None, sample_hz=0)
    registry.ring = RingBuffer(registry.ring.columns, 8)
    for second in range(5):  # one sample a second, exit_io_out = 10 per second so far
        row = np.zeros(registry.ring.columns)
        row[:2] = second * 1_000_000_000, second
        row[2 + registry.names.index("exit_io_out")] = 10 * second
        registry.ring.append(row)
    counts = registry.to_dataframe(metrics=["exit_io_out"], vcpus=["0"], last_s=2)
    assert counts["elapsed_s"].tolist() == [2, 3, 4] and counts["value"].tolist() == [20, 30, 40]
    rates = registry.to_dataframe(rates=True, metrics=["exit_io_out"], vcpus=["0"], last_s=2)
    assert rates["elapsed_s"].tolist() == [2, 3, 4] and rates["value"].tolist() == [10, 10, 10]


# --- a full disk: every export is all or nothing ------------------------------------------------------

#: each format's writer; 16 vCPUs make every export bigger than the one page left free
WRITERS = {".csv": "write_csv", ".parquet": "write_parquet", ".jsonl": "write_json_lines"}
MANY_VCPUS = 16


def many_vcpu_registry(**kwargs) -> MetricsRegistry:
    """A started registry of fake vCPUs (no VM needed: only the export is under test)."""
    registry = MetricsRegistry([FakePeripherals(i) for i in range(MANY_VCPUS)], None, **kwargs)
    registry.start()
    return registry


def full_disk_message(path) -> str:
    return f"cannot write {path}: No space left on device (errno 28); free some space or choose another folder"


@pytest.mark.parametrize("suffix", WRITERS)
def test_an_export_to_a_full_disk_leaves_no_file(tiny_disk, suffix):
    registry = many_vcpu_registry(sample_hz=0)
    path = tiny_disk / f"metrics{suffix}"
    fill_up(tiny_disk, leave=CHUNK)  # room for part of the export: it fails part-way
    with pytest.raises(ExportWriteError) as failure:
        getattr(registry, WRITERS[suffix])(path)
    assert str(failure.value) == full_disk_message(path)
    assert isinstance(failure.value, OSError) and failure.value.errno == errno.ENOSPC and failure.value.filename == str(path)
    assert names_in(tiny_disk) == set(), "neither the final name nor a temporary file is left"


@pytest.mark.parametrize("suffix", WRITERS)
def test_a_failed_rewrite_keeps_the_older_complete_file(tiny_disk, suffix):
    registry = many_vcpu_registry(sample_hz=0)
    path = tiny_disk / f"metrics{suffix}"
    write = getattr(registry, WRITERS[suffix])
    write(path)
    older = path.read_bytes()
    registry.sample()  # the rewrite (or the next JSON line) has more to say
    fill_up(tiny_disk, leave=CHUNK)
    with pytest.raises(ExportWriteError, match=re.escape(full_disk_message(path))):
        write(path)
    assert path.read_bytes() == older, "the older file is exactly as it was: no half line, no truncation"
    assert names_in(tiny_disk) == {path.name}


def test_a_periodic_json_writer_on_a_full_disk_reports_once_and_stops(tiny_disk, caplog):
    registry = many_vcpu_registry(sample_hz=50, history_s=10)
    path = tiny_disk / "periodic.jsonl"
    caplog.set_level(logging.WARNING, logger="kvmlab")
    try:
        registry.write_json_lines(path, every_s=0.02)
        fill_up(tiny_disk, leave=CHUNK)  # the writer keeps going meanwhile; a line needs two pages
        deadline = time.monotonic() + 5
        while registry.json_lines_error(path) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        lines, samples = path.read_text().splitlines(), registry.samples
        time.sleep(0.3)
        assert registry.samples >= samples + 5, "the sampler goes on sampling"
        assert path.read_text().splitlines() == lines, "the writer stopped"
    finally:
        registry.stop()
    error = registry.json_lines_error(path)
    assert isinstance(error, ExportWriteError) and str(error) == full_disk_message(path)
    assert lines and all(json.loads(line)["vcpus"] for line in lines), "every line written is complete"
    assert [(r.levelno, r.exc_info) for r in caplog.records] == [(logging.WARNING, None)], "one warning, no traceback"
    assert caplog.records[0].getMessage() == f"{full_disk_message(path)}; periodic JSON lines to {path} stopped (sampling goes on)"
