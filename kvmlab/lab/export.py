"""The Lab's export: a run's metrics as CSV and Parquet, its totals, its trace and its plot."""

from __future__ import annotations

from pathlib import Path

from ..errors import ExportWriteError
from ..metrics.export import ExportError, check_output_path


#: where the Lab's Export writes by default: a folder beside the notebook (a kernel's working
#: folder is its notebook's), created on the first export
DEFAULT_FOLDER = "lab-export"


def prepare_folder(folder) -> Path:
    """``folder`` as an absolute path, created (with its parents) if it does not exist yet.

    Why create it: the Lab offers a default folder, and an Export button whose first press
    fails with "create it first" is a button that does not work. (``MetricsRegistry.export``,
    called from code, still refuses a missing folder: there a typo should not make folders.)"""
    path = Path(folder).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ExportError(f"{str(path)!r} is a file, not a folder; choose a folder to export into") from None
    except OSError as err:
        raise ExportError(f"cannot create the folder {str(path)!r}: {err.strerror}; choose another folder") from None
    return path


def export_run(machine, folder, stem: str = "kvmlab") -> list[Path]:
    """Writes ``<stem>-metrics.csv`` (+ ``.parquet`` where pyarrow is installed),
    ``<stem>-totals.csv``, ``<stem>-trace.csv`` when tracing and ``<stem>-exits.png`` into
    ``folder`` (created if missing); returns their absolute paths. Every destination is
    checked before anything is written."""
    from ..plotting import RatePlot

    folder = prepare_folder(folder)
    metrics = machine.metrics
    wanted = [(folder / f"{stem}-metrics.csv", "timeseries"), (folder / f"{stem}-totals.csv", "totals")]
    try:
        import pyarrow  # noqa: F401

        wanted.append((folder / f"{stem}-metrics.parquet", "timeseries"))
    except ImportError:
        pass
    if metrics.tracing or any(t is not None for t in metrics.traces):
        wanted.append((folder / f"{stem}-trace.csv", "trace"))
    plot = folder / f"{stem}-exits.png"
    for path, _ in wanted:
        check_output_path(path)
    check_output_path(plot, (".png",))
    written = []
    try:
        for path, what in wanted:
            written.append(metrics.export(path, what=what))
        RatePlot(metrics, window_s=None).save(plot)
        written.append(plot)
    except ExportWriteError:
        raise  # already says which file, why, and what to do
    except OSError as err:  # a file in the way...
        raise ExportError(f"writing {err.filename or folder}: {err.strerror}") from None
    return written
