"""Writing metrics out: CSV, Parquet and Firecracker-style JSON lines.

Paths are checked *before* any work: a missing folder, an unwritable one or an unknown
extension is a ``ExportError`` that says what to do, not a traceback after a long run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ConfigError

FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}


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
    if path.suffix.lower() == ".parquet":
        require_pyarrow()
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def append_json_line(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record, separators=(",", ":")) + "\n")
