"""Teaching devices: a 16550 serial console, a debug-exit port and an MMIO mailbox."""

from .base import Device
from .console import Console
from .debug_exit import DEBUG_EXIT_PORT, DebugExit
from .mailbox import MAILBOX_BASE, Mailbox
from .serial import COM1, Serial16550

__all__ = ["COM1", "Console", "DEBUG_EXIT_PORT", "DebugExit", "Device", "MAILBOX_BASE", "Mailbox", "Serial16550"]
