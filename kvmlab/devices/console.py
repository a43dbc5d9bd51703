"""``Console``: what the guest printed, kept per machine, readable while the guest runs."""

from __future__ import annotations

import threading


class Console:
    """A bounded, thread-safe byte log. ``text`` decodes it; ``version`` grows with every write
    so a view can poll cheaply for news. Past ``limit`` bytes the oldest are dropped and
    counted in ``dropped`` (never silently)."""

    def __init__(self, limit: int = 1 << 20):
        self.limit = limit
        self._data = bytearray()
        self._lock = threading.Lock()
        self.dropped = 0
        self.version = 0

    def write(self, data: bytes) -> None:
        with self._lock:
            self._data += data
            excess = len(self._data) - self.limit
            if excess > 0:
                del self._data[:excess]
                self.dropped += excess
            self.version += len(data)

    def put(self, byte: int) -> None:
        self.write(bytes((byte,)))

    @property
    def bytes(self) -> bytes:
        with self._lock:
            return bytes(self._data)

    @property
    def text(self) -> str:
        return self.bytes.decode("utf-8", "replace")

    def read_since(self, version: int) -> tuple[str, int]:
        """New text since ``version`` (as returned earlier), and the version to ask with next."""
        with self._lock:
            new = min(self.version - version, len(self._data))
            chunk = bytes(self._data[len(self._data) - new :]) if new > 0 else b""
            return chunk.decode("utf-8", "replace"), self.version

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Console({len(self._data)} bytes, dropped={self.dropped})"
