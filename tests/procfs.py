"""What this test process holds, as the kernel sees it: open fds and kvmlab's threads."""

from __future__ import annotations

import os
import threading


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def kvmlab_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("kvmlab") and t.is_alive()]
