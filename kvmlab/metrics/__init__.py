"""Per-vCPU exit metrics: live counters, kernel statistics, sampled history, traces, exports."""

from ..errors import ExportWriteError
from .counters import AGGREGATES, COUNTERS, LatencyAgg, VcpuMetrics
from .export import ExportError
from .registry import ALL, MetricsRegistry

__all__ = ["AGGREGATES", "ALL", "COUNTERS", "ExportError", "ExportWriteError", "LatencyAgg", "MetricsRegistry", "VcpuMetrics"]
