"""Assemble x86 text (Intel syntax, GNU directives) with keystone, in 16, 32 or 64-bit mode.

What differs from a bare ``keystone.Ks.asm`` call:

* ``;`` starts a comment, as in NASM and most teaching material (in GNU syntax it separates
  statements, which turns every commented line into an error). ``#`` comments work too.
* ``.include "idt.asm"`` brings in one of kvmlab's guest libraries (``LIBRARIES``: the
  ``.asm`` files in ``kvmlab/guest/programs/lib/``), written out in place, so a program reads
  what it uses; any other ``.include``, and every ``.incbin``, is refused (keystone silently
  ignores both). Line numbers in errors stay those of your text (a library defines macros,
  and an error inside one is reported at the line that uses it).
* ``defines`` become ``.equ`` lines before the text: a program's parameters and the machine's
  layout constants. Inside memory operands they are also written out as numbers, because
  keystone silently drops one of two symbols in a memory operand: ``[MAILBOX + MB_COUNTERS]``
  assembles to ``[0x100]`` (seen in 16, 32 and 64-bit mode, keystone 0.9.2). A memory operand
  that still names two symbols (labels or in-text ``.equ`` constants) is refused with a hint.
* In 16-bit code, a memory operand whose address does not fit in 16 bits (``[0xa0004]``) is
  refused: 16-bit addressing has a 16-bit offset, and keystone silently keeps its low 16 bits
  (``[0x0004]``, the real-mode interrupt table), so the program touches another address and
  dies much later (a triple fault with no exit before it). Refused rather than warned: no
  16-bit program can mean the truncated address by writing the long one, a warning scrolls
  past in a notebook, and the error can say exactly what to write instead (a segment).
* An error names the line of *your* text it comes from: keystone only says what went wrong,
  so on failure each statement is assembled on its own (with every label and constant defined)
  to find the first one that fails.
"""

from __future__ import annotations

import ast
import operator
import re
import threading

from ..errors import AssemblyError

try:
    import keystone
except ImportError:  # pragma: no cover - keystone-engine is a hard dependency
    keystone = None

BITS_TO_MODE = {16: "KS_MODE_16", 32: "KS_MODE_32", 64: "KS_MODE_64"}
_LABEL = re.compile(r"^\s*([A-Za-z_.$][\w.$]*)\s*:")
_EQU = re.compile(r"^\s*(?:\.equ|\.set)\s+([A-Za-z_.$][\w.$]*)\s*,", re.IGNORECASE)
_ASSIGN = re.compile(r"^\s*([A-Za-z_$][\w.$]*)\s*=")
_FORBIDDEN = re.compile(r"^\s*\.(include|incbin)\b", re.IGNORECASE)
_INCLUDE = re.compile(r"""^\s*\.include\s+"([\w.-]+)"\s*$""", re.IGNORECASE)

_MEMORY_OPERAND = re.compile(r"\[([^\]]*)\]")
_IDENTIFIER = re.compile(r"(?<![\w.$])([A-Za-z_.$][\w.$]*)")
_REGISTER_NAMES = {
    *(f"{p}{r}" for p in ("", "e", "r") for r in ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp", "ip")),
    *(f"r{n}{s}" for n in range(8, 16) for s in ("", "d", "w", "b")),
    "al", "bl", "cl", "dl", "ah", "bh", "ch", "dh", "sil", "dil", "spl", "bpl",
    "cs", "ds", "es", "fs", "gs", "ss", "byte", "word", "dword", "qword", "ptr", "offset",
}  # fmt: skip

_engines: dict[int, object] = {}
_lock = threading.Lock()  # keystone handles are not documented as thread-safe


def strip_comment(line: str) -> str:
    """Removes a ``;`` or ``#`` comment, leaving quoted strings alone."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == "\\":
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in ";#":
            return line[:i].rstrip()
    return line.rstrip()


def _engine(bits: int):
    if keystone is None:
        raise AssemblyError("keystone-engine is not installed: pip install keystone-engine")
    if bits not in BITS_TO_MODE:
        raise AssemblyError(f"bits={bits!r}: assemble in 16, 32 or 64-bit mode")
    if bits not in _engines:
        _engines[bits] = keystone.Ks(keystone.KS_ARCH_X86, getattr(keystone, BITS_TO_MODE[bits]))
    return _engines[bits]


def _ks_assemble(bits: int, text: str, base: int) -> bytes:
    encoding, _ = _engine(bits).asm(text, base)
    return bytes(encoding or b"")


def assemble(source: str, bits: int, base: int = 0, *, defines: dict[str, int] | None = None, name: str | None = None) -> bytes:
    """Assembles ``source`` for code placed at guest address ``base``; raises ``AssemblyError``."""
    if not isinstance(source, str):
        raise AssemblyError(f"assembly source must be text, got {type(source).__name__}", program=name)
    lines, origins = _with_libraries([strip_comment(line) for line in source.splitlines()], name)
    try:
        return _assemble_lines(lines, bits, base, defines, name)
    except AssemblyError as err:
        if err.line is None or origins[err.line - 1] == (None, err.line):
            raise
        library, number = origins[err.line - 1]  # a line of a library, or one after it
        where = name if library is None else f"{name} (in {library})" if name else library
        raise AssemblyError(err.message, line=number, text=err.text, program=where) from None


def _assemble_lines(lines: list[str], bits: int, base: int, defines: dict[str, int] | None, name: str | None) -> bytes:
    defines = {key: int(value) for key, value in (defines or {}).items()}
    lines = [_numbers_in_memory_operands(line, defines) for line in lines]
    constants = {**_text_constants(lines), **defines}
    for number, line in enumerate(lines, 1):
        _refuse_two_symbol_operands(line, number, name)
        if bits == 16:
            _refuse_truncated_addresses(line, number, name, constants)
    prelude = [f".equ {key}, {value}" for key, value in defines.items()]
    text = "\n".join(prelude + lines)
    with _lock:
        try:
            return _ks_assemble(bits, text, base)
        except keystone.KsError as err:
            number, line_text, message = _locate_error(lines, prelude, bits, base)
            raise AssemblyError(message or str(err), line=number, text=line_text, program=name) from None


def library_names() -> list[str]:
    """The guest libraries a program can ``.include`` (kvmlab/guest/programs/lib/*.asm)."""
    from importlib import resources

    folder = resources.files("kvmlab.guest.programs").joinpath("lib")
    return sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".asm"))


def library_source(library: str) -> str:
    """The text of guest library ``library`` ("idt.asm"); ``AssemblyError`` if there is none."""
    from importlib import resources

    if library not in library_names():
        raise AssemblyError(f'.include "{library}": kvmlab has no guest library of that name; it has {", ".join(library_names())}')
    return resources.files("kvmlab.guest.programs").joinpath("lib", library).read_text()


def _with_libraries(lines: list[str], name: str | None) -> tuple[list[str], list[tuple[str | None, int]]]:
    """``lines`` with each ``.include "<library>"`` replaced by the library's lines (each at
    most once: a second include of the same library adds nothing), and where each line came
    from: (None, its line in the program) or (the library, its line there). Refuses
    ``.incbin`` and the include of anything else, saying what exists."""
    out: list[str] = []
    origins: list[tuple[str | None, int]] = []
    included: set[str] = set()
    for number, line in enumerate(lines, 1):
        match = _INCLUDE.match(line)
        if match:
            library = match.group(1)
            try:
                text = library_source(library)
            except AssemblyError as err:
                raise AssemblyError(str(err), line=number, text=line, program=name) from None
            if library not in included:
                included.add(library)
                for library_line, part in enumerate(text.splitlines(), 1):
                    out.append(strip_comment(part))
                    origins.append((library, library_line))
            continue
        if _FORBIDDEN.match(line):
            raise AssemblyError(
                f'.incbin, and .include of anything but kvmlab\'s guest libraries ({", ".join(library_names())}), '
                "are not supported; paste the text in instead",
                line=number, text=line, program=name,
            )  # fmt: skip
        out.append(line)
        origins.append((None, number))
    return out, origins


def _code_part(line: str) -> str:
    """The line up to its first string literal: operands never follow one."""
    return re.split(r"[\"']", line, maxsplit=1)[0]


def _numbers_in_memory_operands(line: str, defines: dict[str, int]) -> str:
    """Writes ``defines`` out as numbers inside ``[...]`` (see the module docstring: keystone)."""
    code = _code_part(line)
    if "[" not in code or not defines:
        return line

    def operand(match: re.Match) -> str:
        inner = _IDENTIFIER.sub(lambda m: hex(defines[m.group(1)]) if m.group(1) in defines else m.group(1), match.group(1))
        return f"[{inner}]"

    return _MEMORY_OPERAND.sub(operand, code) + line[len(code) :]


def _refuse_two_symbol_operands(line: str, number: int, name: str | None) -> None:
    for match in _MEMORY_OPERAND.finditer(_code_part(line)):
        symbols = [s for s in _IDENTIFIER.findall(match.group(1)) if s.lower() not in _REGISTER_NAMES]
        if len(symbols) > 1:
            raise AssemblyError(
                f"the memory operand [{match.group(1).strip()}] names {len(symbols)} symbols ({', '.join(symbols)}); keystone would silently "
                f"drop one of them. Give the sum a name (.equ {symbols[0]}_{symbols[1]}, {' + '.join(symbols)}) and use that",
                line=number, text=line, program=name,
            )  # fmt: skip


def _text_constants(lines: list[str]) -> dict[str, int]:
    """The ``.equ NAME, number`` constants of the text whose value is a plain number expression."""
    found: dict[str, int] = {}
    for line in lines:
        match = _EQU.match(line)
        if match:
            value = _evaluate(line[match.end() :], found)
            if value is not None:
                found[match.group(1)] = value
    return found


_OPERATORS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.LShift: operator.lshift,
    ast.RShift: operator.rshift, ast.BitOr: operator.or_, ast.BitAnd: operator.and_, ast.BitXor: operator.xor,
    ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert,
}  # fmt: skip


def _evaluate(expression: str, names: dict[str, int]) -> int | None:
    """The value of an integer expression of numbers and ``names``; None if it is anything
    else (a label, a float, a syntax kvmlab does not read): then nothing is checked."""
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError:
        return None

    def value(node) -> int | None:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name):
            return names.get(node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            return None if left is None or right is None else _OPERATORS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            inner = value(node.operand)
            return None if inner is None else _OPERATORS[type(node.op)](inner)
        return None

    try:
        return value(tree)
    except (ValueError, OverflowError):  # a negative shift count...
        return None


#: the registers 16-bit addressing can use; with any other (EAX, ...) the CPU uses 32-bit
#: addressing (an 0x67 prefix), whose displacement is 32 bits and is not truncated
_ADDRESS_16 = {"bx", "bp", "si", "di"}
#: real mode reaches the first MiB (plus the HMA): segment * 16 + offset
REAL_MODE_LIMIT = 0x10_FFEF


def _kept_whole(line: str, value: int, constants: dict[str, int]) -> bool:
    """Whether keystone encodes this statement with the whole address: for some forms it
    picks 32-bit addressing (an 0x67 prefix, a 32-bit displacement) by itself, and only the
    16-bit forms (``mov eax, [moffs16]``, ``[bx + disp16]``) truncate. Asked of keystone
    itself, on the statement alone, rather than guessed from the mnemonic."""
    statement = _code_part(line).strip()
    while (match := _LABEL.match(statement)) is not None:
        statement = statement[match.end() :].strip()
    statement = _numbers_in_memory_operands(statement, constants)  # the constants as numbers, as assemble() does
    try:
        with _lock:
            encoding = _ks_assemble(16, statement, 0)
    except keystone.KsError:
        return True  # not for this check to report: the assembly proper names the error
    return (value & 0xFFFF_FFFF).to_bytes(4, "little") in encoding


def _refuse_truncated_addresses(line: str, number: int, name: str | None, constants: dict[str, int]) -> None:
    """Refuses a 16-bit memory operand whose address (or displacement) needs more than 16 bits."""
    for match in _MEMORY_OPERAND.finditer(_code_part(line)):
        operand = match.group(1)
        words = {w.lower() for w in _IDENTIFIER.findall(operand)}
        if words & (_REGISTER_NAMES - _ADDRESS_16 - {"byte", "word", "dword", "qword", "ptr", "offset"}):
            continue  # 32-bit addressing, or a segment named inside the brackets (keystone refuses it)
        zeros = {register: 0 for register in _ADDRESS_16}
        value = _evaluate(re.sub(r"(?i)\b(bx|bp|si|di)\b", lambda m: m.group(1).lower(), operand), {**constants, **zeros})
        if value is None or -0x8000 <= value <= 0xFFFF or _kept_whole(line, value, constants):
            continue
        kept = value & 0xFFFF
        where = " (in real mode: the interrupt vector table)" if kept < 0x400 else ""
        if 0 <= value <= REAL_MODE_LIMIT:
            segment = (value >> 4) & 0xF000 if value <= 0xFFFFF else 0xFFFF
            registers = " + the registers" if words & _ADDRESS_16 else ""
            advice = (
                f"address it through a segment register instead, as segment * 16 + offset: "
                f"mov ax, {segment:#x} / mov es, ax / then es:[{value - segment * 16:#x}{registers}] (the bundled programs "
                f"do this for the mailbox: mov ax, MAILBOX >> 4 / mov es, ax)"
            )
        else:
            advice = "real mode cannot reach it at all (segment * 16 + offset ends at 0x10ffef): load the program in protected or long mode"
        raise AssemblyError(
            f"the memory operand [{operand.strip()}] is address {value:#x}, which does not fit in 16 bits: 16-bit code "
            f"addresses memory with a 16-bit offset, and the assembler would silently keep {kept:#x}{where}; {advice}",
            line=number, text=line, program=name,
        )  # fmt: skip


def _locate_error(lines: list[str], prelude: list[str], bits: int, base: int) -> tuple[int | None, str | None, str | None]:
    """Finds the first statement that fails on its own (with all symbols stubbed). Labels a
    macro defines are stubbed too (a use of the macro defines them), except in a trial of
    that very use."""
    labels: set[str] = set()
    macro_labels: dict[str, set[str]] = {}  # macro name -> the labels its body defines
    constants: list[str] = []
    macros: list[str] = []
    macro: str | None = None
    for line in lines:
        stripped = line.strip()
        if stripped.lower().startswith(".macro"):
            macro = (stripped.split()[1:] or [""])[0].rstrip(",").lower()
            macro_labels[macro] = set()
        defined = {m.group(1) for m in re.finditer(r"([A-Za-z_.$][\w.$]*)\s*:", stripped.split('"')[0])}
        labels |= defined
        if macro is not None:
            macro_labels[macro] |= defined
            macros.append(line)
            if stripped.lower().startswith(".endm"):
                macro = None
            continue
        if _EQU.match(line) or _ASSIGN.match(line):
            constants.append(line)
    in_macro = False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        lower = stripped.lower()
        if lower.startswith(".macro"):
            in_macro = True
        if in_macro:
            if lower.startswith(".endm"):
                in_macro = False
            continue
        statement = stripped
        while True:  # drop leading "label:" definitions
            match = _LABEL.match(statement)
            if not match:
                break
            statement = statement[match.end() :].strip()
        if not statement or statement.startswith((".if", ".else", ".endif", ".elseif", ".endm")):
            continue
        own = {m.group(1) for m in re.finditer(r"([A-Za-z_.$][\w.$]*)\s*:", stripped.split('"')[0])}
        own |= macro_labels.get(statement.split()[0].lower(), set())
        stubs = [f".equ {label}, {base}" for label in sorted(labels - own)]
        trial = "\n".join(prelude + stubs + [c for c in constants if c.strip() != stripped] + macros + [statement])
        try:
            _ks_assemble(bits, trial, base)
        except keystone.KsError as err:
            return number, line, str(err)
    return None, None, None


def disassemble(code: bytes, bits: int, address: int = 0, count: int = 0) -> list[tuple[int, bytes, str]]:
    """``(address, bytes, "mnemonic operands")`` for each instruction (capstone)."""
    import capstone

    mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
    engine = capstone.Cs(capstone.CS_ARCH_X86, mode)
    return [(i.address, bytes(i.bytes), f"{i.mnemonic} {i.op_str}".strip()) for i in engine.disasm(code, address, count)]
