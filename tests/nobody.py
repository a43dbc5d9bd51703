"""Runs a check as the unprivileged user ``nobody``: the errors kvmlab gives a user without
rights (to /dev/kvm, to a folder) can only be seen by dropping root's rights in a child."""

from __future__ import annotations

import os
from typing import Callable

NOBODY = 65534


def as_nobody(action: Callable[[], str]) -> str:
    """Forks, becomes nobody, runs ``action``; returns what it returned, or
    ``"<ExceptionType>: <message>"`` if it raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                message = action()
            except Exception as err:
                message = f"{type(err).__name__}: {err}"
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    return message
