"""Reliability: nothing outlives close(), a close that timed out can be finished, bad
arguments get kvmlab errors, and a soak of pause/resume cycles keeps the metrics exact.

docs/reliability.md lists what is tested here and elsewhere, with the counts.
"""

from __future__ import annotations

import gc
import math
import threading

import pytest

from kvmlab import ConfigError, Machine, MachineStateError, programs
from kvmlab.vmm import Vmm
from kvmlab.vstate.vcpu import Vcpu

from .procfs import kvmlab_threads, open_fds

STUCK_PORT = 0x610


def live_objects() -> dict[str, int]:
    gc.collect()
    kinds = (Machine, Vmm, Vcpu)
    counts = dict.fromkeys((k.__name__ for k in kinds), 0)
    for obj in gc.get_objects():
        if type(obj) in kinds:
            counts[type(obj).__name__] += 1
    return counts


def test_no_machine_vmm_or_vcpu_outlives_close(engine):
    """30 machines, run, stopped and closed in every way a notebook does it: none remains."""
    before = live_objects()
    for i in range(30):
        m = Machine(vcpus=2, memory_mib=1, engine=engine, sample_hz=50)
        if i % 3 == 2:  # built, never started
            m.mmio_bus
        else:
            m.load(programs.mmio_counter(iterations=200), mode="real")
            m.start()
            if i % 3 == 0:
                m.wait(10)
        if i % 2:
            m.close()
        del m  # the rest are closed by their finalizer
    assert live_objects() == before


class StuckDevice:
    """A port whose write blocks until the test lets it go (a device handler that hangs)."""

    size = 1

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def read(self, offset: int, size: int) -> int:
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        self.entered.set()
        self.release.wait(30)


def test_a_close_that_timed_out_is_finished_by_the_next_one(engine):
    before_fds = open_fds()
    device = StuckDevice()
    m = Machine(vcpus=1, memory_mib=1, engine=engine, timeout=1.5)
    m.add_device(device, STUCK_PORT, bus="pio")
    m.load(programs.from_source("mov dx, PORT\nout dx, al\nhlt\n", port=STUCK_PORT), mode="real")
    m.start()
    assert device.entered.wait(5)
    with pytest.raises(MachineStateError, match="did not finish"):
        m.close()
    assert not m.closed and kvmlab_threads(), "the stuck vCPU is still there"
    device.release.set()
    m.close()
    assert m.closed
    assert kvmlab_threads() == []
    m.close()  # and closing again is still fine
    del m
    gc.collect()
    assert open_fds() == before_fds


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("memory_mib", math.nan, "finite"),
        ("memory_mib", math.inf, "finite"),
        ("timeout", math.nan, "finite"),
        ("timeout", math.inf, "finite"),
        ("timeout", -1, "more than 0"),
        ("timeout", 1e10, "at most"),
        ("history_s", math.nan, "finite"),
        ("history_s", math.inf, "finite"),
        ("history_s", -5, "finite number of seconds with room"),
    ],
)
def test_non_finite_arguments_are_config_errors(argument, value, message):
    with pytest.raises(ConfigError, match=message):
        Machine(engine="auto", **{argument: value})


@pytest.mark.parametrize("timeout", [-1, math.nan, math.inf, 1e10])
def test_wait_and_step_refuse_a_timeout_that_is_not_a_duration(engine, machines, timeout):
    m = machines(engine=engine)
    m.load(programs.busy_loop(), mode="real")
    with pytest.raises(ConfigError, match="finite number of seconds"):
        m.step(timeout=timeout)
    m.start()
    with pytest.raises(ConfigError, match=r"wait\(timeout\)"):
        m.wait(timeout)


def test_metrics_after_close_are_final_and_a_new_sample_is_refused(engine, tmp_path):
    m = Machine(vcpus=2, memory_mib=1, engine=engine)
    m.load(programs.mmio_counter(iterations=300, read_every=4), mode="long")
    m.start()
    m.wait(10)
    m.close()
    totals = m.metrics.totals()
    assert list(totals["exit_mmio_write"]) == [300, 300, 600]
    if engine == "kvm":
        assert totals.loc["all", "kvm.mmio_exits"] == 600 + 150, "KVM's own count, read when the machine stopped"
    assert m.metrics.current(0)["exit_mmio_read"] == 75
    with pytest.raises(MachineStateError, match="has stopped"):
        m.metrics.sample()
    with pytest.raises(ConfigError, match="choose one of timeseries, totals, trace, addresses"):
        m.metrics.export(tmp_path / "x.csv", what="bogus")
    with pytest.raises(MachineStateError, match="closed"):
        m.add_device(StuckDevice(), STUCK_PORT, bus="pio")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.kvm
def test_soak_pause_resume_on_8_vcpus_keeps_the_metrics_exact_against_kvm(machines):
    """3,000 pause/resume cycles of 8 busy vCPUs (about 10 s here): afterwards every vCPU's
    MMIO exits, as kvmlab counted them, equal KVM's own count, and the guest's tally."""
    m = machines(vcpus=8, memory_mib=2)
    m.load(programs.mmio_counter(iterations=0, read_every=4), mode="protected")
    m.start()
    for _ in range(3000):
        m.pause()
        m.resume()
    m.pause()
    totals = m.metrics.totals()
    for vcpu in range(8):
        ours = totals.loc[str(vcpu), "exit_mmio_read"] + totals.loc[str(vcpu), "exit_mmio_write"]
        assert ours == totals.loc[str(vcpu), "kvm.mmio_exits"], f"vCPU {vcpu}"
        results = m.results(vcpu)
        assert results["mismatches"] == 0
        assert totals.loc[str(vcpu), "exit_mmio_write"] in (results["mmio_writes"], results["mmio_writes"] + 1)
        assert m.metrics.vcpu(vcpu).interrupted >= 1000


def test_the_lab_export_on_a_full_disk_says_which_file_and_why(tiny_disk):
    """export_run writes CSVs and the plot: each all or nothing, the error the export's own."""
    from kvmlab import ExportWriteError
    from kvmlab.lab.export import export_run

    from .tinydisk import CHUNK, fill_up, names_in

    with Machine(vcpus=1, memory_mib=1, engine="auto") as m:
        m.load(programs.mmio_counter(iterations=500), mode="real")
        m.start()
        m.wait(10)
        fill_up(tiny_disk, leave=CHUNK)
        with pytest.raises(ExportWriteError, match="No space left on device") as caught:
            export_run(m, tiny_disk)
    assert str(tiny_disk) in str(caught.value)
    assert not any(name.startswith(".") for name in names_in(tiny_disk)), "no temporary file is left"


def test_a_plot_saved_to_a_full_disk_leaves_no_file(tiny_disk):
    from kvmlab import ExportWriteError
    from kvmlab.plotting import RatePlot

    from .tinydisk import fill_up, names_in

    with Machine(vcpus=1, memory_mib=1, engine="auto") as m:
        m.load(programs.mmio_counter(iterations=500), mode="real")
        m.start()
        m.wait(10)
        fill_up(tiny_disk)
        with pytest.raises(ExportWriteError, match="exits.png"):
            RatePlot(m.metrics, window_s=None).save(tiny_disk / "exits.png")
    assert names_in(tiny_disk) == set()


def test_an_export_write_error_survives_pickling():
    import errno
    import pickle

    from kvmlab import ExportWriteError

    error = ExportWriteError("/x/m.csv", OSError(errno.ENOSPC, "No space left on device"))
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ExportWriteError and str(copy) == str(error) and copy.errno == errno.ENOSPC
