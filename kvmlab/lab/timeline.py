"""When did each vCPU change state? A poller that writes down every change it sees.

A control panel shows states *now*; a boot is about their order: an AP waiting for INIT, then
(for as long as the guest waits between the two) for SIPI, then running. ``record_states`` polls ``machine.states`` (cheap: no ioctl, each
vCPU thread keeps its own status) and returns one row per change, until the machine stops or
the timeout passes. A change shorter than ``interval`` can be missed: it is a sampler, not a
trace (``Machine(trace=True)`` records every exit).
"""

from __future__ import annotations

import time

import pandas as pd

from ..errors import ConfigError

COLUMNS = ["t", "vcpu", "state", "mp_state", "shown"]


def record_states(machine, *, start: bool = False, interval: float = 0.002, timeout: float = 30.0) -> pd.DataFrame:
    """Rows ``t`` (seconds from the call), ``vcpu``, ``state``, ``mp_state`` and ``shown`` (what
    the control panel shows) each time a vCPU's status changes. ``start=True`` records the
    states first and then starts the machine, so nothing that happens at start is missed.
    Returns when the machine has stopped, or after ``timeout`` seconds (the machine keeps
    running then; the last row is still what it was doing)."""
    if not 0 < interval <= 1:
        raise ConfigError(f"interval={interval!r}: need a positive number of seconds up to 1")
    if not 0 < timeout:
        raise ConfigError(f"timeout={timeout!r}: need a positive number of seconds")
    rows: list[tuple] = []
    last: dict[int, str] = {}
    began = time.monotonic()

    def sample() -> None:
        now = time.monotonic() - began
        for status in machine.states:
            shown = str(status)
            if last.get(status.index) != shown:
                last[status.index] = shown
                rows.append((now, status.index, status.state.value, status.mp_state, shown))

    sample()
    if start:
        machine.start()
    deadline = began + timeout
    while machine.exit is None and not machine.closed and time.monotonic() < deadline:
        sample()
        time.sleep(interval)
    if not machine.closed:
        sample()
    return pd.DataFrame(rows, columns=COLUMNS)
