"""Per-vCPU exit metrics: live counters, kernel statistics, sampled history, traces, exports."""

from ..errors import ExportWriteError
from .counters import ADDRESS_LIMIT, AGGREGATES, COUNTERS, LatencyAgg, VcpuMetrics
from .export import ExportError
from .hexint import HexArray, hex_array
from .registry import ALL, OTHER_ADDRESSES, MetricsRegistry

__all__ = [
    "ADDRESS_LIMIT",
    "AGGREGATES",
    "ALL",
    "COUNTERS",
    "ExportError",
    "ExportWriteError",
    "HexArray",
    "LatencyAgg",
    "MetricsRegistry",
    "OTHER_ADDRESSES",
    "VcpuMetrics",
    "hex_array",
]
