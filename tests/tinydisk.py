"""A tiny real disk for the full-disk checks: a 64 KiB tmpfs (needs root to mount), and a
way to fill it. A real ENOSPC from the kernel, not a mocked ``write``, is the only way to
see short writes and failing fsyncs the way a user's full disk gives them."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

SIZE = "64k"
CHUNK = 4096  # one tmpfs page: the unit a full tmpfs frees and fills
FILLER = "filler"


@contextlib.contextmanager
def mounted_tmpfs() -> Iterator[Path]:
    """A fresh empty folder on its own ``SIZE`` tmpfs; unmounted and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="kvmlab-tiny-disk-"))
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(folder)], check=True, capture_output=True)
        try:
            yield folder
        finally:
            subprocess.run(["umount", str(folder)], check=True, capture_output=True)
    finally:
        folder.rmdir()


def fill_up(folder: Path, leave: int = 0) -> Path:
    """Fills the disk holding ``folder`` with one file until ENOSPC, then frees ``leave``
    bytes (rounded up to whole pages) so a write can fail part-way; returns the file."""
    filler = folder / FILLER
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * CHUNK)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
    if leave:
        pages = -(-leave // CHUNK)
        os.truncate(filler, max(0, filler.stat().st_size - pages * CHUNK))
    return filler


def names_in(folder: Path) -> set[str]:
    """Every name in ``folder`` but the filler: what an export left behind."""
    return {p.name for p in folder.iterdir()} - {FILLER}
