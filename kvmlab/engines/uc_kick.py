"""The emulated engine's kick check at every block start: ``uc_kick.c``, built on first use.

The same hook also makes the engine's own stops between instructions: at an interrupt window
(the first block start with RFLAGS.IF = 1, while the engine waits for one) and at the next
block (a vector was raised during an exit). Those have flags of their own in ``KickState``,
never the kick's ``immediate_exit``, so a controller's kick is neither mistaken nor lost.

Backends by availability, as ``selectors`` chooses one: where a C compiler exists (``cc``,
every machine that runs the test suite), the check is the small C function in ``uc_kick.c``,
compiled once into the user's cache folder and called by Unicorn without the GIL; elsewhere
a Python hook does the same check, exactly as correctly but holding the GIL for each block
(measured: about 1 us a block, and vCPUs spinning in RAM then slow each other down).
``KVMLAB_UC_KICK=python`` chooses the Python hook (the tests run both).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable

from ..errors import EngineUnavailableError

log = logging.getLogger("kvmlab.engines")

SOURCE = Path(__file__).with_name("uc_kick.c")
ENV_CHOICE = "KVMLAB_UC_KICK"  # "c" (the default where it builds) or "python"


class KickState(ctypes.Structure):
    """``struct kvmlab_kick`` in ``uc_kick.c``: the hook reads ``pending`` (the kick),
    ``watch_if``, ``stop_next`` and ``skip`` (the engine's own stops) and writes ``kicked``
    or ``watched`` when it stopped a run, and ``block`` at every block start."""

    _fields_ = [
        ("pending", ctypes.c_void_p),
        ("stop", ctypes.c_void_p),
        ("kicked", ctypes.c_uint8),
        ("watch_if", ctypes.c_uint8),
        ("stop_next", ctypes.c_uint8),
        ("watched", ctypes.c_uint8),
        ("skip", ctypes.c_uint8),
        ("reg_read", ctypes.c_void_p),
        ("flags_reg", ctypes.c_int),
        ("if_mask", ctypes.c_uint64),
        ("block", ctypes.c_uint64),
    ]


_library: ctypes.CDLL | None = None
_tried = False
_lock = threading.Lock()
#: why the C hook is not in use (None while it is, or before the first machine asked)
fallback_reason: str | None = None


def _cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kvmlab`` or ``~/.cache/kvmlab``; with no home folder, a folder of
    this user's own under the system's temporary folder."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        home = os.path.expanduser("~")
        base = os.path.join(home, ".cache") if home != "~" else os.path.join(tempfile.gettempdir(), f"kvmlab-cache-{os.geteuid()}")
    return Path(base) / "kvmlab"


def _private(path: Path) -> bool:
    """Owned by this user and writable by nobody else: only then is a library found there
    loaded (another user able to write it could otherwise put code into this process)."""
    info = path.lstat()
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not stat.S_ISLNK(info.st_mode)


def _build() -> Path:
    """Compiles ``uc_kick.c`` into the cache once per source version and machine, or finds it
    there; raises OSError or SubprocessError when it cannot. The library is written under a
    temporary name and renamed, so two processes building at once never load a half-written
    file; the folder and the file must be this user's own (``_private``)."""
    source = SOURCE.read_bytes()
    tag = hashlib.sha256(source + platform.machine().encode()).hexdigest()[:16]
    folder = _cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _private(folder):
        raise PermissionError(f"{folder} is not this user's own folder")
    target = folder / f"uc_kick-{tag}.so"
    if target.exists():
        if not _private(target):
            raise PermissionError(f"{target} is not this user's own file")
        return target
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise FileNotFoundError("no C compiler (cc or gcc) on PATH")
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".uc_kick-", suffix=".so")
    os.close(fd)
    try:
        subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", temporary, str(SOURCE)], check=True, capture_output=True, timeout=60)
        os.chmod(temporary, 0o755)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def c_hook() -> ctypes._CFuncPtr | None:
    """The C block hook, or None where it cannot be had (then use the Python one; the
    reason is in ``fallback_reason`` and ``kvmlab info``). Built once per process."""
    global _library, _tried, fallback_reason
    if os.environ.get(ENV_CHOICE, "c") == "python":
        return None
    with _lock:
        if not _tried:
            try:
                _library = ctypes.CDLL(str(_build()))
            except (OSError, subprocess.SubprocessError) as err:
                fallback_reason = f"cannot build or load {SOURCE.name}: {err}"
                log.info("emulated engine: %s; kicks are checked in Python", fallback_reason)
            _tried = True
    return _library.kvmlab_on_block if _library is not None else None


def describe() -> str:
    """Which kick check the emulated engine uses, for ``kvmlab info``."""
    if os.environ.get(ENV_CHOICE, "c") == "python":
        return f"Python ({ENV_CHOICE}=python)"
    return "C (uc_kick.c)" if c_hook() is not None else f"Python ({fallback_reason})"


def _unicorn_library():
    """Unicorn's own ctypes library object (the binding's ``uclib``), or None."""
    try:
        from unicorn.unicorn_py3.unicorn import uclib
    except ImportError:  # another binding layout: the Python hook still works
        return None
    return uclib


def install(
    uc, run_page: bytearray, pending_offset: int, hook_block: int, python_hook: Callable, flags_reg: int, if_mask: int
) -> KickState | None:  # fmt: skip
    """Adds the block hook to ``uc``: the C one if available (returns its state, whose
    ``kicked`` and ``watched`` say whether it stopped a run), else ``python_hook`` (returns
    None). ``pending_offset`` is where the kick flag (``immediate_exit``) is in ``run_page``;
    ``flags_reg`` is Unicorn's register id of EFLAGS and ``if_mask`` its IF bit."""
    function = c_hook()
    uclib = _unicorn_library()
    if function is None or uclib is None:
        uc.hook_add(hook_block, python_hook)
        return None
    page = (ctypes.c_uint8 * len(run_page)).from_buffer(run_page)
    state = KickState(
        pending=ctypes.addressof(page) + pending_offset,
        stop=ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value,
        reg_read=ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value,
        flags_reg=flags_reg,
        if_mask=if_mask,
    )
    state._keep = (page, function)  # the page view and the function outlive the hook
    handle = ctypes.c_size_t()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), hook_block, ctypes.cast(function, ctypes.c_void_p),
                               ctypes.cast(ctypes.pointer(state), ctypes.c_void_p), ctypes.c_uint64(1), ctypes.c_uint64(0))  # fmt: skip
    if status != 0:
        raise EngineUnavailableError(f"the emulated engine could not add its block hook (Unicorn error {status}); set {ENV_CHOICE}=python")
    return state
