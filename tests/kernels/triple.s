# triple.s: a Multiboot kernel that triple-faults at once (an empty IDT, then UD2), for the
# exit status `kvmlab boot` gives a crash: QEMU's with -no-reboot (0), not a debug-exit code.
# The IDT's base is where there is no memory (see kvmlab's triple_fault.asm for why).
.intel_syntax noprefix
.include "multiboot_header.s"
.section .text, "ax"
.code32
.global _start
_start:
    cli
    lidt [empty_idt]
    ud2
    hlt
.section .data
empty_idt:
    .word 0
    .long 0xbf000
