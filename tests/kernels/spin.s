# spin.s: a Multiboot kernel that never ends: interrupts off, a loop with no exits.
# For the never-hang rules: the boot timeout must end it, Pause and close must still work.
.intel_syntax noprefix
.include "multiboot_header.s"
.section .text, "ax"
.code32
.global _start
_start:
    cli
spin:
    inc dword ptr [counter]
    jmp spin
.section .data
counter: .long 0
