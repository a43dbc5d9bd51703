"""``MetricsRegistry``: every vCPU's exit metrics, live, over time and as DataFrames.

>>> m.metrics.vcpu(0).exit_mmio_write          # a live counter
>>> m.metrics.totals()                          # one row per vCPU (+ 'all'), a column per metric
>>> m.metrics.to_dataframe(rates=True)          # tidy time series: t, elapsed_s, vcpu, metric, value
>>> m.metrics.trace_dataframe()                 # one row per exit, when tracing is on
>>> m.metrics.write_json_lines("metrics.jsonl") # Firecracker-style line (deltas since the last)

Live values come straight from the per-vCPU ``VcpuMetrics`` the vCPU threads write and from
KVM's binary stats fd. A sampler thread copies all of them, ``sample_hz`` times a second, into
a ring buffer of ``history_s`` seconds; the DataFrames are built from that buffer.

The registry only needs objects with ``.metrics`` and ``.trace`` (a vCPU's peripherals) and,
for the kernel's statistics, one ``KvmStats`` (or None) per vCPU: it works for any engine.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..checks import is_whole_number
from ..errors import ConfigError, ExportWriteError, MachineStateError, UnknownMetricError, UnknownVcpuError
from .catalog import MetricSpec, exit_metric_specs, kernel_metric_specs, line_metric_specs
from .counters import ADDRESS_LIMIT, AGGREGATES, COUNTERS, NS_PER_US, VcpuMetrics
from .export import FORMATS, append_json_line, check_output_path, write_frame
from .hexint import hex_array
from .lines import DOORBELL_FIELDS, LINE_FIELDS, LINE_METRIC_NAMES, LineMetrics
from .ring import RingBuffer
from .sampler import Sampler
from .trace import DEFAULT_CAPACITY, KIND_NAMES, TraceBuffer

DEFAULT_SAMPLE_HZ = 10.0
DEFAULT_HISTORY_S = 3600.0
ALL = "all"
_FIRECRACKER_COUNTERS = ("exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write", "failures")
#: (kind column, bus, VcpuMetrics table) of each per-address table
_ADDRESS_TABLES = (
    ("mmio_read", "mmio", "mmio_read_by_addr"),
    ("mmio_write", "mmio", "mmio_write_by_addr"),
    ("io_in", "pio", "io_in_by_port"),
    ("io_out", "pio", "io_out_by_port"),
)
#: why a registry has no kvm.* metrics
NO_KERNEL_STATS = "this engine has no KVM binary stats fd"
#: the ``device`` of the row holding the exits at addresses a full table did not keep
OTHER_ADDRESSES = "(other addresses)"

log = logging.getLogger(__name__)


class _JsonLines:
    """One JSON-lines destination: its last values (for deltas), its flush period and the
    write failure that stopped it (None while it works)."""

    def __init__(self, path: Path, every_s: float | None):
        self.path = path
        self.every_s = every_s
        self.due = time.monotonic() + every_s if every_s else None
        self.baseline: list[dict[str, float]] | None = None
        self.error: ExportWriteError | None = None

    def stop(self) -> None:
        self.every_s = self.due = None

    def fail(self, error: ExportWriteError) -> None:
        """Stops periodic writing and keeps ``error`` for ``json_lines_error``."""
        self.error = error
        self.stop()


class MetricsRegistry:
    """A machine's metrics. It exists as soon as the machine does (reading it before the vCPUs
    exist shows zeros); ``attach`` connects it to the vCPUs' peripherals and kernel statistics
    when they are created, before the machine starts. Built from ``peripherals`` directly,
    it is attached at once."""

    def __init__(
        self,
        peripherals: Sequence | None = None,
        kernel_stats: Sequence | None = None,
        *,
        vcpus: int | None = None,
        kernel_stats_expected: bool = True,
        sample_hz: float = DEFAULT_SAMPLE_HZ,
        history_s: float = DEFAULT_HISTORY_S,
        describe_address: Callable[[str, int], tuple[str, str]] | None = None,
        lines: LineMetrics | None = None,
    ):
        """Either ``peripherals`` (and ``kernel_stats``): attached now; or ``vcpus``: a count,
        with its own ``VcpuMetrics`` that the vCPUs' peripherals must use (``attach``).
        ``lines``: the machine's interrupt-line counters (its own, empty, if not given)."""
        if (peripherals is None) == (vcpus is None):
            raise ConfigError("MetricsRegistry: give the vCPUs' peripherals, or their number (vcpus=) and attach() them later")
        self._peripherals: list = []
        self._metrics: list[VcpuMetrics] = [p.metrics for p in peripherals] if peripherals is not None else [VcpuMetrics(i) for i in range(vcpus)]
        self._kernel: list | None = None
        #: why kernel statistics are missing (None when they are present)
        # unknown until attach() for a registry made before its vCPUs, unless the engine said so
        self.kernel_stats_absent: str | None = None if peripherals is None and kernel_stats_expected else NO_KERNEL_STATS
        self._kernel_picks: tuple[int, ...] = ()
        self._stopped = False
        #: KVM's statistics read when the machine stopped (their fds close with the machine)
        self._final_kernel: list[tuple[int, ...]] | None = None
        self._counters = operator.attrgetter(*COUNTERS)
        #: the machine's interrupt lines (``irq_lines()`` has them one by one)
        self.lines = lines if lines is not None else LineMetrics()
        self._describe_address = describe_address
        #: called first in every sample (the machine drains its coalesced MMIO ring there, so
        #: a sample counts every write the guest made before it); None: nothing to do
        self.before_sample: Callable[[], object] | None = None
        #: the machine's coalesced MMIO zones as rows (``coalesced_zones()``); None: none
        self.zone_rows: Callable[[], list[tuple]] | None = None
        self.sample_hz = sample_hz
        self.history_s = history_s
        self.sampler = Sampler(self.sample, sample_hz) if sample_hz else None
        # perf_counter_ns is monotonic but has no epoch: one anchor pair turns it into UTC.
        self._anchor_wall_ns = time.time_ns()
        self._anchor_perf_ns = time.perf_counter_ns()
        self.start_perf_ns: int | None = None
        self._json: dict[Path, _JsonLines] = {}
        self._json_lock = threading.Lock()
        self.traces: list[TraceBuffer | None] = [None] * len(self._metrics)
        self._trace_on = False  # enable_trace() before attach(): attach() connects the traces
        self._set_specs()
        if peripherals is not None:
            self.attach(peripherals, kernel_stats)

    def _set_specs(self) -> None:
        """The metric columns (kvmlab's, then KVM's own where attached) and the ring that holds them."""
        self.specs: list[MetricSpec] = exit_metric_specs() + line_metric_specs()
        if self._kernel:
            descriptors = [d for d in self._kernel[0].descriptors if d.size == 1]
            self.specs += kernel_metric_specs(descriptors)
            self._kernel_picks = tuple(d.offset // 8 for d in descriptors)
        self._spec_index = {spec.name: i for i, spec in enumerate(self.specs)}
        # sample_hz = 0: no sampler thread; only the samples at start and stop are kept.
        capacity = max(2, int(self.history_s * self.sample_hz)) if self.sample_hz else 2
        self.ring = RingBuffer(2 + len(self.specs) * len(self._metrics), capacity)

    @property
    def attached(self) -> bool:
        """Whether the vCPUs exist and are connected (``attach``)."""
        return bool(self._peripherals)

    def attach(self, peripherals: Sequence, kernel_stats: Sequence | None = None) -> None:
        """Connects the vCPUs (their peripherals, whose ``metrics`` must be this registry's)
        and their kernel statistics (one ``KvmStats`` or None each). Once, before ``start``."""
        peripherals = list(peripherals)
        if self.attached or self.start_perf_ns is not None:
            raise MachineStateError("metrics: the vCPUs are already attached")
        if len(peripherals) != len(self._metrics) or any(p.metrics is not m for p, m in zip(peripherals, self._metrics)):
            raise ConfigError("metrics: attach() needs one peripherals object per vCPU, each using this registry's VcpuMetrics")
        stats = list(kernel_stats) if kernel_stats is not None else [None] * len(peripherals)
        self._peripherals = peripherals
        if stats and all(s is not None for s in stats):
            self._kernel = stats
            self.kernel_stats_absent = None
            self._set_specs()
        else:
            self.kernel_stats_absent = NO_KERNEL_STATS
        if self._trace_on:
            for p, trace in zip(peripherals, self.traces):
                p.trace = trace.record

    # --- names -------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    @property
    def vcpu_labels(self) -> list[str]:
        return [str(i) for i in range(len(self._metrics))]

    def vcpu(self, index: int) -> VcpuMetrics:
        """The live counters of one vCPU (``.exit_mmio_write``, ``.exit_mmio_write_agg``, ...)."""
        if not is_whole_number(index) or not 0 <= index < len(self._metrics):
            raise UnknownVcpuError(f"vCPU {index!r} is not in this machine; valid vCPUs: {', '.join(self.vcpu_labels)}")
        return self._metrics[index]

    __getitem__ = vcpu

    def __len__(self) -> int:
        return len(self._metrics)

    def __iter__(self):
        return iter(self._metrics)

    def spec(self, name: str) -> MetricSpec:
        try:
            return self.specs[self._spec_index[name]]
        except KeyError:
            raise UnknownMetricError(f"no metric {name!r}; valid metrics: {', '.join(self.names)}") from None

    def _vcpu_selection(self, vcpus) -> list[int]:
        if vcpus is None:
            return list(range(len(self._metrics)))
        chosen = []
        for v in [vcpus] if isinstance(vcpus, (int, str)) else vcpus:
            if v == ALL:
                continue
            try:
                index = int(v)
            except (TypeError, ValueError):
                index = -1
            self.vcpu(index) if 0 <= index < len(self._metrics) else self.vcpu(v)  # raises with the list
            chosen.append(index)
        return chosen

    # --- live values ----------------------------------------------------------------------------

    def _row(self, index: int, kernel_values=None, line_values=None) -> list[float]:
        """One vCPU's values in ``specs`` order (the machine's line totals included: pass
        ``line_values`` to read them once for several rows)."""
        m = self._metrics[index]
        row = list(self._counters(m))
        for name in AGGREGATES:
            agg = getattr(m, name)
            count = agg.count
            row += (count, agg.min_ns / NS_PER_US if count else np.nan, agg.max_ns / NS_PER_US, agg.sum_ns / NS_PER_US)
        row += line_values if line_values is not None else self.lines.totals()
        if self._kernel:
            if kernel_values is None:
                kernel_values = self._final_kernel[index] if self._final_kernel is not None else self._kernel[index].read_raw()
            row += [kernel_values[i] for i in self._kernel_picks]
        return row

    def current(self, vcpu: int | None = None) -> dict[str, float]:
        """Live values of every metric, for one vCPU or combined over all: counts as ints,
        latencies as floats (``MetricSpec.integer``)."""
        if vcpu is not None:
            values = self._row(self.vcpu(vcpu).vcpu)
        else:
            values = self._combine(np.array([[self._row(i) for i in range(len(self._metrics))]], dtype=float))[0]
        return {spec.name: int(value) if spec.integer else float(value) for spec, value in zip(self.specs, values)}

    def _combine(self, values: np.ndarray) -> np.ndarray:
        """'all' from per-vCPU values ``[sample, vcpu, metric]`` -> ``[sample, metric]``:
        sums, or min/max where that is what the metric means."""
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN minima stay NaN
            out = np.nansum(values, axis=1)
            for j, spec in enumerate(self.specs):
                if spec.combine == "min":
                    out[:, j] = np.nanmin(values[:, :, j], axis=1)
                elif spec.combine in ("max", "same"):
                    out[:, j] = np.nanmax(values[:, :, j], axis=1)
        return out

    def totals(self) -> pd.DataFrame:
        """One row per vCPU and one for 'all', one column per metric (live values)."""
        rows = np.array([self._row(i) for i in range(len(self._metrics))], dtype=float)
        table = np.vstack([rows, self._combine(rows[None])])
        frame = pd.DataFrame(table, columns=self.names, index=pd.Index(self.vcpu_labels + [ALL], name="vcpu"))
        return frame.astype({s.name: "int64" for s in self.specs if s.integer})

    def address_counts(self) -> pd.DataFrame:
        """Exits per address (MMIO) or port (PIO): which device register the guest hammers.

        Each vCPU keeps at most ``ADDRESS_LIMIT`` addresses per kind; the exits at any others
        are one row with device ``"(other addresses)"`` and no address, so ``count`` still
        sums to the exits of that kind. ``address`` is an integer column shown in hex
        (``kvmlab.metrics.hexint``): ``frame.address == 0xa0004`` works, and it reads 0xa0004."""
        records = []
        for index, m in enumerate(self._metrics):
            for kind, bus, name in _ADDRESS_TABLES:
                for address, count in list(getattr(m, name).items()):
                    device, register = self._describe_address(bus, address) if self._describe_address else ("", "")
                    records.append((str(index), kind, address, device, register, count))
                other = m.other_addresses[name]
                if other:
                    records.append((str(index), kind, pd.NA, OTHER_ADDRESSES, f"beyond {ADDRESS_LIMIT} addresses", other))
        frame = pd.DataFrame(records, columns=["vcpu", "kind", "address", "device", "register", "count"])
        frame["vcpu"] = pd.Categorical(frame["vcpu"], categories=self.vcpu_labels)
        frame["address"] = hex_array(frame["address"])
        frame["count"] = frame["count"].astype("int64")
        return frame.sort_values(["vcpu", "count"], ascending=[True, False], ignore_index=True)

    def irq_lines(self) -> pd.DataFrame:
        """One row per interrupt line the machine made (``Machine.irq_line``, ``irqfd``):
        ``source`` ("line" or "irqfd"), ``gsi``, ``trigger`` ("level" for a resampling irqfd,
        "edge" for another; "any" for a line, which the guest programs), and how often it was
        raised (``raises``, ``pulses``), lowered, coalesced or masked by KVM, triggered through
        its eventfd, resampled at the guest's EOI and re-triggered. The sums are the
        ``line_*`` and ``irqfd_*`` metrics."""
        frame = pd.DataFrame(self.lines.rows(), columns=["source", "gsi", "trigger", *LINE_FIELDS])
        return frame.astype({name: "int64" for name in ("gsi", *LINE_FIELDS)})

    def ioeventfds(self) -> pd.DataFrame:
        """One row per doorbell the machine registered (``Machine.ioeventfd``): ``bus`` ("mmio"
        or "pio"), ``address``, ``size``, ``datamatch`` (None: any value), the guest writes it
        took (``signals``), the I/O thread's reads that served them (``wakeups``: one read sums
        the writes since the last) and the handler's exceptions (``errors``). The sums are the
        ``ioeventfd_*`` metrics."""
        rows = self.lines.doorbell_rows()
        frame = pd.DataFrame(rows, columns=["bus", "address", "size", "datamatch", *DOORBELL_FIELDS])
        # datamatch: Python ints (a u64 may not fit int64) and None for "any value", not NaN
        frame["datamatch"] = pd.Series([row[3] for row in rows], dtype=object)
        frame = frame.astype({name: "int64" for name in ("size", *DOORBELL_FIELDS)})
        frame["address"] = hex_array(frame["address"])  # shown 0xb0000, still an integer
        return frame

    def coalesced_zones(self) -> pd.DataFrame:
        """One row per coalesced zone the machine registered (``Machine.coalesce_mmio``,
        ``coalesce_pio``): its ``bus`` ("mmio" or "pio"), ``device``, ``register``, ``address`` and ``size``, whether it is still ``open``,
        the ``writes`` delivered from the ring to it and the ``drains`` that delivered any.
        Exact whoever drained (the per-vCPU ``coalesced_*`` counters say which vCPU did)."""
        columns = ["bus", "device", "register", "address", "size", "open", "writes", "drains"]
        rows = self.zone_rows() if self.zone_rows is not None else []
        return pd.DataFrame(rows, columns=columns).astype({"address": "int64", "size": "int64", "open": "bool", "writes": "int64", "drains": "int64"})

    # --- sampling -------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the clock (elapsed_s = 0) and the sampler; called when the machine starts."""
        if self.start_perf_ns is None:
            self.start_perf_ns = time.perf_counter_ns()
        self.sample()
        if self.sampler is not None:
            self.sampler.start()

    def stop(self) -> None:
        """Stops the sampler after one last sample; called when the machine stops.

        From then on the values are final: KVM's statistics are read once more and kept, so
        ``totals()`` and ``current()`` still answer after the machine is closed and its
        statistics fds are gone (no vCPU runs after a stop, so nothing is lost)."""
        if self.sampler is not None:
            self.sampler.stop()
        if self._stopped:
            return
        if self.start_perf_ns is not None:
            self.sample()
            self.flush_due(force=True)
        if self._kernel:
            self._final_kernel = [stats.read_raw() for stats in self._kernel]
        self._stopped = True

    @property
    def final(self) -> bool:
        """True once the machine has stopped: the values no longer change."""
        return self._stopped

    def sample(self) -> None:
        """Copies every metric of every vCPU into the ring buffer (one row)."""
        if self.final:
            raise MachineStateError(
                "metrics.sample(): the machine has stopped and its last sample was taken then; "
                "totals(), to_dataframe() and export() hold the final values"
            )
        if self.before_sample is not None:
            self.before_sample()
        now = time.perf_counter_ns()
        start = self.start_perf_ns if self.start_perf_ns is not None else now
        row = [self._wall_ns(now), (now - start) / 1e9]
        lines = self.lines.totals()
        for index in range(len(self._metrics)):
            row += self._row(index, line_values=lines)
        self.ring.append(row)
        self.flush_due()

    def _wall_ns(self, perf_ns: int) -> int:
        return self._anchor_wall_ns + (perf_ns - self._anchor_perf_ns)

    @property
    def samples(self) -> int:
        return len(self.ring)

    def _history(self, data: np.ndarray, last_s: float | None = None, extra: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(wall ns, elapsed s, values[sample, vcpu, metric]) from ``data``, one snapshot of
        the ring (``ring.array()``), cut to the last ``last_s`` seconds (plus ``extra`` earlier
        samples, for rates) *before* any work. Every column comes from that one snapshot:
        the sampler thread appends at any moment, and two reads would be two histories."""
        if last_s is not None and len(data):
            first = int(np.searchsorted(data[:, 1], data[-1, 1] - last_s))
            data = data[max(first - extra, 0) :]
        values = data[:, 2:].reshape(len(data), len(self._metrics), len(self.specs))
        return data[:, 0], data[:, 1], values

    def window(self, metrics: Sequence[str], *, rates: bool = True, last_s: float | None = None, with_all: bool = False):
        """Numpy form of the history for plots: ``(elapsed_s, values[sample, vcpu, metric])``,
        per-second rates of cumulative metrics by default. ``with_all`` adds the 'all' row
        as the last vCPU."""
        _, elapsed, values = self._window(self.ring.array(), metrics, rates=rates, last_s=last_s, with_all=with_all)
        return elapsed, values

    def _window(self, data: np.ndarray, metrics: Sequence[str], *, rates: bool, last_s: float | None, with_all: bool):
        """``window()`` of one ring snapshot ``data``, with the wall-clock ns of each row too."""
        columns = [self._column(n) for n in metrics]
        if rates and not all(self.specs[j].cumulative for j in columns):
            raise ConfigError(f"rates exist only for cumulative metrics, not {[n for n, j in zip(metrics, columns) if not self.specs[j].cumulative]}")
        wall, elapsed, values = self._history(data, last_s, extra=1 if rates else 0)
        if with_all:
            values = np.concatenate([values, self._combine(values)[:, None, :]], axis=1)
        values = values[:, :, columns]
        if not rates:
            return wall, elapsed, values
        if len(values) < 2:
            return wall[:0], elapsed[:0], values[:0]
        dt = np.diff(elapsed)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_second = np.diff(values, axis=0) / np.where(dt > 0, dt, np.nan)[:, None, None]
        return wall[1:], elapsed[1:], per_second

    def _column(self, name: str) -> int:
        index = self._spec_index.get(name)
        if index is None:
            self.spec(name)  # raises the KeyError listing the valid names
        return index

    def to_dataframe(self, rates: bool = False, metrics: Sequence[str] | None = None, vcpus=None, last_s: float | None = None) -> pd.DataFrame:
        """Sampled metrics in tidy long form: ``t`` (UTC), ``elapsed_s``, ``vcpu`` (category,
        'all' for the aggregate), ``metric`` (category), ``value``.

        ``rates=True`` gives per-second rates between consecutive samples, for the cumulative
        metrics only (a rate of a minimum means nothing). ``metrics`` / ``vcpus`` select,
        ``last_s`` keeps only the most recent seconds. ``value`` is int64 when every chosen
        metric counts whole things (no rates, no latencies), so counts print as 120000, not
        1.2e+05; otherwise float64.
        """
        names = list(metrics) if metrics is not None else self.names
        columns = [self._column(n) for n in names]
        if rates:
            kept = [(n, j) for n, j in zip(names, columns) if self.specs[j].cumulative]
            names, columns = [n for n, _ in kept], [j for _, j in kept]
        labels = self.vcpu_labels + [ALL]
        chosen = self._vcpu_selection(vcpus)
        rows = chosen + ([len(self._metrics)] if vcpus is None or ALL in ([vcpus] if isinstance(vcpus, (str, int)) else vcpus) else [])
        wall, elapsed, block = self._window(self.ring.array(), names, rates=rates, last_s=last_s, with_all=True)
        block = block[:, rows]
        if not rates and all(self.specs[j].integer for j in columns):
            block = block.astype(np.int64)
        samples, nv, nm = block.shape
        return pd.DataFrame(
            {
                "t": pd.to_datetime(np.repeat(wall.astype("int64"), nv * nm), utc=True),
                "elapsed_s": np.repeat(elapsed, nv * nm),
                "vcpu": pd.Categorical.from_codes(np.tile(np.repeat(np.arange(nv), nm), samples), categories=[labels[r] for r in rows]),
                "metric": pd.Categorical.from_codes(np.tile(np.arange(nm), samples * nv), categories=names),
                "value": block.reshape(-1),
            }
        )

    def series(self, metric: str, *, rates: bool = True, last_s: float | None = None, vcpus=None) -> pd.DataFrame:
        """One metric over time, wide: index ``elapsed_s``, one column per vCPU (and 'all')."""
        tidy = self.to_dataframe(rates=rates, metrics=[metric], vcpus=vcpus, last_s=last_s)
        # one value per (time, vCPU): "first" keeps it, and its dtype (a mean would turn counts to floats)
        return tidy.pivot_table(index="elapsed_s", columns="vcpu", values="value", observed=True, aggfunc="first")

    # --- trace ----------------------------------------------------------------------------------

    @property
    def tracing(self) -> bool:
        return any(trace is not None for trace in self.traces)

    def enable_trace(self, capacity: int = DEFAULT_CAPACITY) -> None:
        """Starts recording one row per exit on every vCPU (bounded: the oldest rows go)."""
        for index in range(len(self._metrics)):
            if self.traces[index] is None or self.traces[index].capacity != capacity:
                self.traces[index] = TraceBuffer(index, capacity)
        self._trace_on = True
        for index, p in enumerate(self._peripherals):  # none yet: attach() connects them
            p.trace = self.traces[index].record

    def disable_trace(self) -> None:
        """Stops recording; what was recorded stays readable."""
        self._trace_on = False
        for p in self._peripherals:
            p.trace = None

    @property
    def trace_dropped(self) -> dict[int, int]:
        """Rows each vCPU's trace dropped because its buffer was full."""
        return {i: (t.dropped if t else 0) for i, t in enumerate(self.traces)}

    def interrupt_latencies(self) -> pd.DataFrame:
        """One row per timed interrupt delivery (the latest ``LATENCY_SAMPLES`` per vCPU):
        ``vcpu``, ``vector``, ``latency_us``, from ``raise_irq`` to the handler's acknowledge
        (the method and what it includes: ``kvmlab.vstate.interrupts.DeliveryClock``).
        ``latency_us.describe(percentiles=[.5, .99])`` gives the distribution; the
        ``irq_delivery_agg`` metrics keep count, min, max and sum of every delivery."""
        vcpus, vectors, latencies = [], [], []
        for index, m in enumerate(self._metrics):
            samples = list(m.irq_delivery_samples)  # a copy: the vCPU thread may append meanwhile
            vcpus += [index] * len(samples)
            vectors += [vector for vector, _ in samples]
            latencies += [ns / NS_PER_US for _, ns in samples]
        return pd.DataFrame(
            {
                "vcpu": pd.Categorical.from_codes(np.array(vcpus, dtype=int), categories=self.vcpu_labels),
                "vector": np.array(vectors, dtype="int64"),
                "latency_us": np.array(latencies, dtype=float),
            }
        )

    def trace_dataframe(self) -> pd.DataFrame:
        """One row per exit: ``t`` (UTC), ``elapsed_s``, ``vcpu``, ``reason``, ``address``
        (or port: an integer column shown in hex, ``kvmlab.metrics.hexint``), ``size``,
        ``data``, ``latency_us``; oldest first. ``attrs['dropped']`` says how many rows each
        vCPU's full buffer pushed out."""
        parts = []
        for index, trace in enumerate(self.traces):
            if trace is None or not trace.rows:
                continue
            rows = np.array(list(trace.rows), dtype=np.uint64).reshape(-1, 6)
            parts.append((index, rows))
        start = self.start_perf_ns or self._anchor_perf_ns
        if parts:
            vcpu = np.concatenate([np.full(len(r), i) for i, r in parts])
            rows = np.concatenate([r for _, r in parts])
        else:
            vcpu, rows = np.zeros(0, dtype=int), np.zeros((0, 6), dtype=np.uint64)
        perf = rows[:, 0].astype("int64")
        frame = pd.DataFrame(
            {
                "t": pd.to_datetime(perf - self._anchor_perf_ns + self._anchor_wall_ns, utc=True),
                "elapsed_s": (perf - start) / 1e9,
                "vcpu": pd.Categorical.from_codes(vcpu, categories=self.vcpu_labels),
                "reason": pd.Categorical.from_codes(rows[:, 1].astype(int), categories=list(KIND_NAMES)),
                "address": hex_array(rows[:, 2]),
                "size": rows[:, 3].astype("int64"),
                "data": rows[:, 4],
                "latency_us": rows[:, 5] / NS_PER_US,
            }
        )
        frame = frame.sort_values("t", kind="stable", ignore_index=True)
        frame.attrs["dropped"] = self.trace_dropped
        return frame

    # --- exports --------------------------------------------------------------------------------

    def export(self, path, *, rates: bool = False, what: str = "timeseries") -> Path:
        """Writes ``what`` ("timeseries", "totals", "trace", "addresses" or "irq_lines") to ``path``; the
        extension picks the format (.csv, .parquet; .jsonl writes a Firecracker line)."""
        path = check_output_path(path)
        if path.suffix.lower() == ".jsonl":
            return self.write_json_lines(path)
        frames = {
            "timeseries": lambda: self.to_dataframe(rates=rates),
            "totals": lambda: self.totals().reset_index(),
            "trace": self.trace_dataframe,
            "addresses": self.address_counts,
            "irq_lines": self.irq_lines,
        }
        if what not in frames:
            raise ConfigError(f"what={what!r}: nothing of that name to export; choose one of {', '.join(frames)}")
        return write_frame(frames[what](), path)

    def write_csv(self, path, **kwargs) -> Path:
        return self.export(check_output_path(path, (".csv",)), **kwargs)

    def write_parquet(self, path, **kwargs) -> Path:
        return self.export(check_output_path(path, (".parquet",)), **kwargs)

    def write_json_lines(self, path, *, every_s: float | None = None) -> Path:
        """Appends one Firecracker-style line to ``path`` now: ``utc_timestamp_ms``, a
        ``vcpu`` section (all vCPUs, Firecracker's field names) and a ``vcpus`` section (each
        vCPU, plus its kernel stats under ``kvm``). Counters are deltas since the previous line
        written to the same path, as Firecracker flushes them. With ``every_s`` it also keeps
        writing a line that often (from the sampler thread) until ``stop_json_lines(path)``.

        A line is written whole or not at all. If this line cannot be written the call raises
        ``ExportWriteError`` and no periodic writing starts. If a *periodic* line cannot be
        written (a full disk), periodic writing to ``path`` stops: one warning is logged, the
        error is kept in ``json_lines_error(path)``, and sampling goes on. Stop rather than
        retry because the usual causes (no space, quota, read-only, I/O error) do not go away
        by themselves within a tick, and retrying would do failing I/O on the sampler thread
        and report it again and again. Nothing is lost by stopping: once the cause is fixed,
        calling this again restarts it, and its first line carries the deltas since the last
        line that was written."""
        path = check_output_path(path, (".jsonl",))
        with self._json_lock:
            writer = self._json.get(path.resolve())
            if writer is None:
                writer = self._json[path.resolve()] = _JsonLines(path, every_s)
            elif every_s is not None:
                writer.every_s, writer.due = every_s, time.monotonic() + every_s
            try:
                self._flush(writer)
            except ExportWriteError as err:
                writer.fail(err)
                raise
            writer.error = None
        return path

    def stop_json_lines(self, path) -> None:
        with self._json_lock:
            writer = self._json.get(Path(path).resolve())
            if writer is not None:
                writer.stop()

    def json_lines_error(self, path) -> ExportWriteError | None:
        """Why writing JSON lines to ``path`` stopped (a full disk...), or None if it did not."""
        with self._json_lock:
            writer = self._json.get(Path(path).resolve())
            return writer.error if writer is not None else None

    def flush_due(self, force: bool = False) -> None:
        """Writes the periodic JSON lines that are due (all of them with ``force``)."""
        if not self._json:
            return
        now = time.monotonic()
        with self._json_lock:
            for writer in self._json.values():
                if writer.due is not None and (force or now >= writer.due):
                    self._flush_periodic(writer, now)

    def _flush_periodic(self, writer: _JsonLines, now: float) -> None:
        """One periodic line; a failure stops this writer with one warning (no traceback:
        the message says all there is) instead of failing every tick of the sampler."""
        try:
            self._flush(writer)
        except ExportWriteError as err:
            writer.fail(err)
            log.warning("%s; periodic JSON lines to %s stopped (sampling goes on)", err, writer.path)
            return
        writer.due = now + writer.every_s

    def _flush(self, writer: _JsonLines) -> None:
        current = [self._json_values(i) for i in range(len(self._metrics))]
        base = writer.baseline or [dict.fromkeys(values, 0) for values in current]
        vcpus = {}
        for index, (now, before) in enumerate(zip(current, base)):
            section: dict = {name: int(now[name] - before[name]) for name in COUNTERS}
            for agg in AGGREGATES:
                low, high = getattr(self._metrics[index], agg).take_window()
                section[agg] = {"min_us": low, "max_us": high, "sum_us": round(now[f"{agg}.sum_us"] - before[f"{agg}.sum_us"], 3)}
            kernel = {n[4:]: int(now[n] - before[n]) for n in now if n.startswith("kvm.")}
            if kernel:
                section["kvm"] = kernel
            vcpus[str(index)] = section
        combined: dict = {name: sum(v[name] for v in vcpus.values()) for name in _FIRECRACKER_COUNTERS}
        for agg in AGGREGATES:
            windows = [v[agg] for v in vcpus.values()]
            active = [w for w in windows if w["max_us"] > 0]
            combined[agg] = {
                "min_us": min((w["min_us"] for w in active), default=0.0),
                "max_us": max((w["max_us"] for w in active), default=0.0),
                "sum_us": round(sum(w["sum_us"] for w in windows), 3),
            }
        lines = {name: int(current[0][name] - base[0][name]) for name in LINE_METRIC_NAMES} if current else {}
        append_json_line(writer.path, {"utc_timestamp_ms": time.time_ns() // 1_000_000, "vcpu": combined, "vcpus": vcpus, "irq_lines": lines})
        writer.baseline = current

    def _json_values(self, index: int) -> dict[str, float]:
        """The cumulative values a JSON line reports deltas of."""
        values = dict(zip(self.names, self._row(index)))
        return {n: v for n, v in values.items() if self.specs[self._spec_index[n]].cumulative}


__all__ = ["ALL", "FORMATS", "OTHER_ADDRESSES", "MetricsRegistry"]
