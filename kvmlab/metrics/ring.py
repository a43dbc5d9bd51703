"""A bounded, growable ring buffer of float64 rows (numpy), for sampled metrics.

Memory grows with use (doubling from a small start) up to ``capacity`` rows, then the oldest
rows are overwritten. One hour at 10 Hz for two vCPUs of ~75 metrics each is ~43 MB at most.
"""

from __future__ import annotations

import threading

import numpy as np

from ..errors import ConfigError


class RingBuffer:
    def __init__(self, columns: int, capacity: int, initial: int = 1024):
        if capacity < 1:
            raise ConfigError(f"ring capacity {capacity!r}: need at least one row")
        self.columns = columns
        self.capacity = capacity
        self._data = np.zeros((min(initial, capacity), columns))
        self._next = 0  # index of the next write
        self._size = 0
        self.overwritten = 0
        self._lock = threading.Lock()  # one writer (the sampler), many readers

    def __len__(self) -> int:
        return self._size

    def append(self, row) -> None:
        with self._lock:
            if self._size == len(self._data) and len(self._data) < self.capacity:
                grown = np.zeros((min(2 * len(self._data), self.capacity), self.columns))
                grown[: self._size] = self._data
                self._data = grown
                self._next = self._size
            self._data[self._next] = row
            self._next = (self._next + 1) % len(self._data)
            if self._size < len(self._data):
                self._size += 1
            else:
                self.overwritten += 1

    def array(self) -> np.ndarray:
        """The rows oldest first: one copy, taken under the lock, so it is one consistent
        history. Read it once per answer and cut every column from that copy: the sampler
        appends between any two reads (and, once full, shifts every row by one)."""
        with self._lock:
            if self._size < len(self._data):
                return self._data[: self._size].copy()
            return np.concatenate((self._data[self._next :], self._data[: self._next]))

    def last(self) -> np.ndarray | None:
        with self._lock:
            if not self._size:
                return None
            return self._data[(self._next - 1) % len(self._data)].copy()
