"""Guest side: the assembler, CPU mode setup and the bundled teaching programs."""

from . import programs
from .asm import assemble, disassemble
from .modes import LOAD_ADDRESS, EntryPoint, Mode

__all__ = ["EntryPoint", "LOAD_ADDRESS", "Mode", "assemble", "disassemble", "programs"]
