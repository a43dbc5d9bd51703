"""The emulated engine's kick check at every block start: ``uc_kick.c``, built on first use.

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
import tempfile
from pathlib import Path
from typing import Callable

log = logging.getLogger("kvmlab.engines")

SOURCE = Path(__file__).with_name("uc_kick.c")
ENV_CHOICE = "KVMLAB_UC_KICK"  # "c" (the default where it builds) or "python"


class KickState(ctypes.Structure):
    """``struct kvmlab_kick`` in ``uc_kick.c``."""

    _fields_ = [("pending", ctypes.c_void_p), ("stop", ctypes.c_void_p), ("kicked", ctypes.c_uint8)]


_library: ctypes.CDLL | None = None
_tried = False


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvmlab"


def _build() -> Path | None:
    """Compiles ``uc_kick.c`` into the cache (once per source version and machine); None if
    there is no compiler or it fails. The library is written under a temporary name and
    renamed, so two processes building at once never load a half-written file."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    source = SOURCE.read_bytes()
    tag = hashlib.sha256(source + platform.machine().encode()).hexdigest()[:16]
    target = _cache_dir() / f"uc_kick-{tag}.so"
    if target.exists():
        return target
    if compiler is None:
        return None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".uc_kick-", suffix=".so")
        os.close(fd)
        try:
            subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", temporary, str(SOURCE)], check=True, capture_output=True, timeout=60)
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
    except (OSError, subprocess.SubprocessError) as err:
        log.info("emulated engine: cannot build %s (%s); kicks are checked in Python", SOURCE.name, err)
        return None
    return target


def c_hook() -> ctypes._CFuncPtr | None:
    """The C block hook, or None where it cannot be had (then use the Python one)."""
    global _library, _tried
    if os.environ.get(ENV_CHOICE, "c") == "python":
        return None
    if not _tried:
        _tried = True
        path = _build()
        if path is not None:
            try:
                _library = ctypes.CDLL(str(path))
            except OSError as err:
                log.info("emulated engine: cannot load %s (%s); kicks are checked in Python", path, err)
    return _library.kvmlab_on_block if _library is not None else None


def _unicorn_library():
    """Unicorn's own ctypes library object (the binding's ``uclib``), or None."""
    try:
        from unicorn.unicorn_py3.unicorn import uclib
    except ImportError:  # another binding layout: the Python hook still works
        return None
    return uclib


def install(uc, run_page: bytearray, pending_offset: int, hook_block: int, python_hook: Callable) -> KickState | None:
    """Adds the block hook to ``uc``: the C one if available (returns its state, whose
    ``kicked`` says whether it stopped a run), else ``python_hook`` (returns None).
    ``pending_offset`` is where the kick flag (``immediate_exit``) is in ``run_page``."""
    function = c_hook()
    uclib = _unicorn_library()
    if function is None or uclib is None:
        uc.hook_add(hook_block, python_hook)
        return None
    page = (ctypes.c_uint8 * len(run_page)).from_buffer(run_page)
    state = KickState(ctypes.addressof(page) + pending_offset, ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value, 0)
    state._keep = (page, function)  # the page view and the function outlive the hook
    handle = ctypes.c_size_t()
    status = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), hook_block, ctypes.cast(function, ctypes.c_void_p),
                               ctypes.cast(ctypes.pointer(state), ctypes.c_void_p), ctypes.c_uint64(1), ctypes.c_uint64(0))  # fmt: skip
    if status != 0:
        raise OSError(f"uc_hook_add failed with Unicorn error {status}")
    return state
