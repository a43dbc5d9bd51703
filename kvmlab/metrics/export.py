"""Writing metrics out: CSV, Parquet and Firecracker-style JSON lines.

Paths are checked *before* any work: a missing folder, an unwritable one or an unknown
extension is a ``ExportError`` that says what to do, not a traceback after a long run.

Writing is all or nothing: a full disk part-way is an ``ExportWriteError`` (path, reason,
what to do) and leaves no partial file under the final name. CSV and Parquet go through
``atomic_output`` (temporary file, fsync, rename); JSON lines are appended by
``append_json_line`` (one complete line or nothing).
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import ConfigError, ExportWriteError

FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}
#: a half-written export is ``.<name>.<random>.tmp`` next to it: hidden, and plainly not the export
TEMPORARY_PREFIX, TEMPORARY_SUFFIX = ".", ".tmp"
#: the permissions ``open(path, "w")`` gives a new file, before the umask
NEW_FILE_MODE = 0o666
#: the umask when /proc/self/status does not say (the usual default)
DEFAULT_UMASK = 0o022


class ExportError(ConfigError):
    """An export destination is unusable (folder, permission, extension, missing library)."""


def check_output_path(path, allowed: tuple[str, ...] = tuple(FORMATS)) -> Path:
    """The path as a ``Path`` if it can be written with a known extension; else ``ExportError``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise ExportError(f"{str(path)!r}: unknown extension {suffix or '(none)'!r}; use one of {', '.join(allowed)}")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        if not folder.is_dir():
            raise ExportError(f"{str(path)!r}: the folder {str(folder)!r} does not exist; create it first")
        if path.is_dir():
            raise ExportError(f"{str(path)!r} is a folder; give a file name")
    except OSError as err:  # e.g. a parent folder this user may not enter
        raise ExportError(f"{str(path)!r}: cannot reach the folder {str(folder)!r}: {err.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"{str(path)!r}: the folder {str(folder)!r} is not writable by this user")
    return path


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ExportError("Parquet needs pyarrow: pip install 'kvmlab[parquet]' (or write .csv instead)") from None


def write_frame(frame, path: Path) -> Path:
    """Writes a DataFrame as CSV or Parquet, by the path's extension (already checked)."""
    parquet = path.suffix.lower() == ".parquet"
    if parquet:
        require_pyarrow()
    with atomic_output(path) as out:
        if parquet:
            frame.to_parquet(out, index=False)
        else:
            frame.to_csv(out, index=False)
    return path


@contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """Yields a binary file that becomes ``path`` only once it is complete.

    Why: writing straight to ``path`` leaves a truncated file under the final name when the
    disk fills, and has already destroyed the previous complete export. Instead the data goes
    to a temporary file in the same folder (the same file system, so the rename is atomic), is
    flushed and fsynced (so a full disk or an I/O error shows up here, before the rename), and
    is then ``os.replace``d onto ``path``. On any failure the temporary file is removed and
    ``path`` is as it was; an ``OSError`` becomes an ``ExportWriteError``."""
    with _reported_as(path):
        prefix = f"{TEMPORARY_PREFIX}{path.name}."
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=TEMPORARY_SUFFIX)
        try:
            with os.fdopen(descriptor, "wb") as out:
                os.fchmod(descriptor, _mode_for(path))
                yield out
                out.flush()
                os.fsync(descriptor)
            os.replace(temporary, path)
        except BaseException:
            _remove_quietly(temporary)
            raise


def append_json_line(path: Path, record: dict) -> None:
    """Appends ``record`` as one JSON line: the complete line or nothing.

    Why not write-temp-and-rename, as ``atomic_output`` does: a periodic writer appends a
    line every few seconds for hours, and copying the whole file each time costs time
    proportional to its length; a rename would also lose ``tail -f`` readers (they follow
    the old file). So the line is encoded first, written with ``os.write`` on an ``O_APPEND``
    descriptor and fsynced; if that fails part-way (a full disk gives short writes) the file
    is cut back to its length before, and a file this call created is removed again."""
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    with _reported_as(path):
        descriptor, created = _open_for_append(path)
        try:
            _append_all_or_nothing(descriptor, data)
        except BaseException:
            if created:
                _remove_quietly(path)
            raise
        finally:
            os.close(descriptor)


@contextmanager
def _reported_as(path: Path) -> Iterator[None]:
    """Turns an ``OSError`` while writing ``path`` into an ``ExportWriteError`` naming it."""
    try:
        yield
    except ExportWriteError:
        raise
    except OSError as err:
        raise ExportWriteError(path, err) from err


def _open_for_append(path: Path) -> tuple[int, bool]:
    """An ``O_APPEND`` descriptor for ``path`` and whether this call created the file
    (``O_EXCL`` tells for sure, so a failed first write can remove exactly what it made)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_EXCL, NEW_FILE_MODE), True
    except FileExistsError:
        return os.open(path, flags), False


def _append_all_or_nothing(descriptor: int, data: bytes) -> None:
    """Writes all of ``data`` at the end and fsyncs, or truncates back to where it was."""
    start = os.fstat(descriptor).st_size
    try:
        rest = memoryview(data)
        while rest:  # a nearly full disk writes part and says so; the next write raises ENOSPC
            rest = rest[os.write(descriptor, rest):]
        os.fsync(descriptor)
    except BaseException:
        with suppress(OSError):  # the original failure is the one to report
            os.ftruncate(descriptor, start)
        raise


def _mode_for(path: Path) -> int:
    """The permissions ``open(path, "w")`` would leave: an existing file's own, else the new-file
    mode less the umask. Why: ``mkstemp`` makes 0600 files, which would hide a shared export."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return NEW_FILE_MODE & ~_umask()


def _umask() -> int:
    """This process's umask, read without setting it (``os.umask`` would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return DEFAULT_UMASK


def _remove_quietly(path) -> None:
    """Removes a file left by a failed write; a failure here must not hide the first one."""
    with suppress(OSError):
        os.remove(path)
