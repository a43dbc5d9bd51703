"""Guest programs with an interrupt table, in real, protected and long mode, for the interrupt
and exception tests (both engines run the same bytes).

``with_table(mode, gates, main, handlers)`` wraps a program's own code in what every mode needs
to take interrupts: the table (real mode: the IVT at 0, which KVM's reset state points IDTR
at; protected and long mode: an IDT inside the program image, 256 gates of 8 or 16 bytes, made
with ``.space`` and filled by ``set_gate`` at start), the gates for ``gates`` ({vector:
(handler label, "interrupt" or "trap")}) and a jump to ``main``.

What keystone makes of some instructions decides a few spellings: handlers return with the
guest library's ``INTERRUPT_RETURN`` (``IRET[mode]``: ``iret`` in 32-bit code would be the
16-bit form, and kvm_pvm cannot emulate ``iretd``);
``lidt [eax]`` in 32-bit code gets a 0x66 prefix (a 24-bit base), so it is written as bytes;
and ``mov r64, [absolute]`` in 64-bit code comes out RIP-relative with the wrong
displacement, so 64-bit code reaches memory through a register.
"""

from __future__ import annotations

#: how a handler returns, in every mode: kvmlab's guest library's INTERRUPT_RETURN (iret,
#: iretq, and in 32-bit code the same-privilege IRET spelled out, which kvm_pvm can emulate:
#: kvmlab/guest/programs/lib/idt.asm says why); ``with_table`` includes the library
IRET = {"real": "INTERRUPT_RETURN", "protected": "INTERRUPT_RETURN", "long": "INTERRUPT_RETURN"}
#: what makes INTERRUPT_RETURN known (macros only: no code)
LIBRARY = '.include "idt.asm"\n'

#: the gate type and attribute byte: present, DPL 0, 32-bit (or 64-bit) interrupt / trap gate
ATTRIBUTES = {"interrupt": 0x8E, "trap": 0x8F}
#: bytes per gate in each mode
GATE_SIZE = {"real": 4, "protected": 8, "long": 16}

_SET_GATE = {
    "protected": """
set_gate:                               ; ecx = vector, eax = handler, dl = type and attributes
    lea ebx, [idt + ecx * 8]
    mov word ptr [ebx], ax
    mov word ptr [ebx + 2], 0x08
    mov byte ptr [ebx + 4], 0
    mov byte ptr [ebx + 5], dl
    shr eax, 16
    mov word ptr [ebx + 6], ax
    ret
""",
    "long": """
set_gate:                               ; ecx = vector, rax = handler, dl = type and attributes
    mov ebx, ecx
    shl ebx, 4
    add rbx, idt
    mov word ptr [rbx], ax
    mov word ptr [rbx + 2], 0x18
    mov byte ptr [rbx + 4], 0
    mov byte ptr [rbx + 5], dl
    shr rax, 16
    mov word ptr [rbx + 6], ax
    shr rax, 16
    mov dword ptr [rbx + 8], eax
    mov dword ptr [rbx + 12], 0
    ret
""",
}

_TABLE = {
    "protected": """
.align 8
idtr:
    .word IDT_LIMIT
    .long idt
.align 8
idt:
    .space 256 * 8
""",
    "long": """
.align 16
idtr:
    .word IDT_LIMIT
    .quad idt
.align 16
idt:
    .space 256 * 16
""",
}


def with_table(mode: str, gates: dict[int, tuple[str, str]], main: str, handlers: str, *, limit: int | None = None) -> str:
    """The program ``main`` + ``handlers`` with an interrupt table holding ``gates``; in
    protected and long mode the IDTR's limit is ``limit`` (default: all 256 gates)."""
    if mode == "real":
        lines = ["    xor ax, ax", "    mov ds, ax"]
        for vector, (label, _) in sorted(gates.items()):
            lines += [f"    mov word ptr [{vector} * 4], {label}", f"    mov word ptr [{vector} * 4 + 2], 0"]
        return LIBRARY + "\n".join(lines) + "\n    jmp main\n" + handlers + "\nmain:\n" + main
    size = GATE_SIZE[mode]
    table = _TABLE[mode].replace("IDT_LIMIT", str(256 * size - 1 if limit is None else limit))
    if mode == "protected":
        lines = ["    mov eax, idtr", "    .byte 0x0f, 0x01, 0x18             ; lidt [eax]"]
        load = "    mov eax, {label}"
    else:
        lines = ["    mov rax, idtr", "    lidt [rax]"]
        load = "    mov rax, {label}"
    for vector, (label, kind) in sorted(gates.items()):
        lines += [f"    mov ecx, {vector}", load.format(label=label), f"    mov dl, {ATTRIBUTES[kind]:#x}", "    call set_gate"]
    return LIBRARY + "\n".join(lines) + "\n    jmp main\n" + _SET_GATE[mode] + handlers + "\nmain:\n" + main + table


def count(field: int) -> str:
    """Adds one to dword ``field`` of vCPU 0's results (in every mode: an absolute address
    keystone encodes right, RIP-relative, in 64-bit code)."""
    return f"    inc dword ptr [RESULTS + {4 * field}]\n"


def handler(mode: str, label: str, field: int) -> str:
    """A handler that counts into dword ``field`` and returns (IRET restores the flags)."""
    return f"{label}:\n{count(field)}    {IRET[mode]}\n"


def program(mode: str, name: str, main: str, gates: dict[int, tuple[str, str]], handlers: str, *, results=(), **params):
    """A ``Program`` for ``mode``: ``main`` with an interrupt table holding ``gates``."""
    from kvmlab.guest.programs import Program

    return Program(f"{name} ({mode})", with_table(mode, gates, main, handlers), {k.upper(): v for k, v in params.items()}, results_fields=tuple(results))


def say(mode: str, char: str) -> str:
    """Sends ``char`` to the serial port (an I/O exit), leaving every register as it was."""
    a, d = {"real": ("ax", "dx"), "protected": ("eax", "edx"), "long": ("rax", "rdx")}[mode]
    return f"    push {a}\n    push {d}\n    mov dx, SERIAL\n    mov al, {ord(char)}\n    out dx, al\n    pop {d}\n    pop {a}\n"


def frame_check(mode: str, label: str, field: int, advance: int, expected: str, *, error_code: bool = False, char: str = "") -> str:
    """A handler that counts into dword ``field`` only if the return address the CPU pushed
    is ``expected`` (and, with ``error_code``, the pushed error code is 0), then moves the
    return address on by ``advance`` bytes (past a faulting instruction) and returns; with
    ``char``, it first sends that character to the serial port."""
    ret = IRET[mode]
    head = f"{label}:\n{say(mode, char) if char else ''}"
    if mode == "real":
        return f"""{head}    push bp
    mov bp, sp
    cmp word ptr [bp + 2], {expected}
    jne {label}_wrong
{count(field)}{label}_wrong:
    add word ptr [bp + 2], {advance}
    pop bp
    {ret}
"""
    sp, size, width = ("esp", "dword", 4) if mode == "protected" else ("rsp", "qword", 8)
    if not error_code:
        return f"""{head}    cmp {size} ptr [{sp}], {expected}
    jne {label}_wrong
{count(field)}{label}_wrong:
    add {size} ptr [{sp}], {advance}
    {ret}
"""
    return f"""{head}    cmp {size} ptr [{sp}], 0
    jne {label}_wrong
    cmp {size} ptr [{sp} + {width}], {expected}
    jne {label}_wrong
{count(field)}{label}_wrong:
    add {sp}, {width}
    add {size} ptr [{sp}], {advance}
    {ret}
"""


def exceptions(mode: str, *, int_n: bool, int3: bool = False, chars: bool = False):
    """Three #DE in a row (a CPU delivers each as #DE: none is nested in another), a #UD,
    an INT 0x21 through a trap gate, an INT3 and, in long mode, a #GP (a non-canonical
    address, error code 0). With ``chars`` each handler also sends a letter to the serial
    port (D, U, I, B, G), so the run makes exits a comparison can see."""
    def letter(char: str) -> str:
        return char if chars else ""

    divisor = "cx" if mode == "real" else "ecx"
    main = f"""
    xor ecx, ecx
    mov esi, 3
divide:
    mov eax, 1
    xor edx, edx
div_at:
    div {divisor}
    dec esi
    jnz divide
ud_at:
    ud2
"""
    gates = {0: ("on_de", "interrupt"), 6: ("on_ud", "interrupt")}
    handlers = frame_check(mode, "on_de", 0, 2, "div_at", char=letter("D")) + frame_check(mode, "on_ud", 1, 2, "ud_at", char=letter("U"))
    if int_n:
        main += "    int 0x21\nint_after:\n"
        gates[0x21] = ("on_int", "trap")
        handlers += frame_check(mode, "on_int", 2, 0, "int_after", char=letter("I"))
    if int3:
        main += "    int3\nint3_after:\n"
        gates[3] = ("on_bp", "interrupt")
        handlers += frame_check(mode, "on_bp", 2, 0, "int3_after", char=letter("B"))
    if mode == "long":
        main += "    mov rax, 0x8000000000000000\ngp_at:\n    mov rbx, [rax]\n"
        gates[13] = ("on_gp", "interrupt")
        handlers += frame_check(mode, "on_gp", 3, 3, "gp_at", error_code=True, char=letter("G"))
    main += "    cli\n    hlt\n"
    return program(mode, "exceptions", main, gates, handlers, results=("de", "ud", "software", "gp"))
