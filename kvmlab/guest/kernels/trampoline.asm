; trampoline.asm: where an application processor starts (16-bit real mode, at TRAMPOLINE).
;
; A Startup IPI with vector v starts an AP in real mode at CS = v * 0x100, IP = 0: physical
; v * 4 KiB. Nothing is set up for it: no stack, no GDT, no protected mode. This page takes it
; to 32-bit protected mode with its own flat GDT and jumps to the kernel's AP entry (ENTRY32),
; the same road every x86 kernel's AP trampoline takes (Linux: trampoline_64.S).

    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdt_descriptor]
    mov eax, cr0
    or eax, 1                           ; CR0.PE: protected mode, paging stays off
    mov cr0, eax
    xor eax, eax                        ; not the multiboot magic: the kernel sees an AP
    .byte 0x66, 0xEA                    ; jmp far 0x08:ENTRY32 (32-bit offset)
    .long ENTRY32
    .word 0x08
    .align 8
gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF            ; 0x08: flat 32-bit code
    .quad 0x00CF92000000FFFF            ; 0x10: flat data
gdt_descriptor:
    .word 23
    .long gdt
