; idt.asm: kvmlab's guest library for interrupt and exception handlers, in every CPU mode.
;
; A CPU finds the handler for vector v in a table that the IDTR register points at (Intel SDM
; Vol. 3A, 6.10 "Interrupt Descriptor Table" and 6.14 for 64-bit mode; real mode: Vol. 3B,
; 20.1.4 "Interrupt and Exception Handling"). Each mode has its own entry format:
;
;   real       the IVT: 4 bytes per vector (offset, then segment), at linear 0 by default
;   protected  8-byte gates: offset 15:0, selector, 0x8E00 (present, DPL 0, 32-bit interrupt
;              gate), offset 31:16
;   long       16-byte gates: the same first 6 bytes, offset 63:16 in the next 6, then zero
;
; An interrupt gate clears IF on entry, so a handler is not interrupted again before its IRET
; (which restores the guest's flags, IF included). kvmlab.guest.idt decodes the same formats.
;
; Use: `.include "idt.asm"` at the top of a program (it defines macros only, no code), then
;     IDT_SET VECTOR, handler   ; clobbers EAX, ECX, EDX (RAX, RCX, RDX)
;     IDT_LOAD                  ; LIDT: this vCPU now uses the table (each vCPU has its own IDTR)
; in handlers SAVE_SCRATCH / RESTORE_SCRATCH (EAX, ECX, EDX) and INTERRUPT_RETURN (the IRET of
; the mode's width), and IDT_LIBRARY once after the program's code: the two routines and, in
; protected and long mode, the table itself (2 KiB or 4 KiB of the program's image).
; Real mode uses the IVT at linear 0 (kvmlab programs run with CS = DS = 0 there).

.macro IDT_SET vector, handler
    mov eax, \vector
    mov edx, \handler
    call idt_set_gate
.endm

.macro IDT_LOAD
    call idt_load
.endm

.macro SAVE_SCRATCH
.if BITS == 64
    push rax
    push rcx
    push rdx
.else
    push eax
    push ecx
    push edx
.endif
.endm

.macro RESTORE_SCRATCH
.if BITS == 64
    pop rdx
    pop rcx
    pop rax
.else
    pop edx
    pop ecx
    pop eax
.endif
.endm

; INTERRUPT_RETURN: back to the interrupted code, with its flags (IF included) restored:
; IRET, which pops what the interrupt pushed, at the mode's width (iret / iretq).
;
; In 32-bit code it is the same-privilege IRET spelled out instead: restore EFLAGS from the
; frame (POPFD), then a far return that pops EIP and CS and drops the saved EFLAGS (RETF 4).
; Why: KVM's instruction emulator implements IRET in real mode only (arch/x86/kvm/emulate.c,
; em_iret: "iret from protected mode unimplemented yet"), and where KVM runs 32-bit guest code
; through that emulator (kvm_pvm, a nested KVM, does) a protected-mode IRET ends the vCPU
; with an emulation failure. On a CPU, with VT-x or AMD-V, `iretd` works and is what you
; would write. The one difference: IRET restores IF and returns in one step, so no interrupt
; can come in between; here one can, after POPFD, and nests one frame deeper (it returns
; here, and the RETF follows). Also: keystone assembles a bare `iret` in 32-bit code as the
; 16-bit form (66 CF), which pops 2-byte words; `iretd` is the 32-bit one.
.macro INTERRUPT_RETURN
.if BITS == 64
    iretq
.elseif BITS == 32
    push dword ptr [esp + 8]            ; the saved EFLAGS
    popfd
    retf 4                              ; EIP, CS, then past the saved EFLAGS
.else
    iret
.endif
.endm

.macro IDT_LIBRARY
; idt_set_gate: EAX = vector, EDX = the handler's address; writes its entry. Clobbers ECX, EDX.
idt_set_gate:
.if BITS == 16
    mov ecx, eax
    shl ecx, 2                          ; the IVT entry: 4 bytes per vector, at linear 0
    mov word ptr [ecx], dx              ; offset
    mov word ptr [ecx + 2], cs          ; segment: this program's own (0)
.elseif BITS == 32
    lea ecx, [idt_table + eax * 8]
    mov word ptr [ecx], dx              ; offset 15:0
    mov word ptr [ecx + 2], cs          ; the code segment selector the handler runs in
    mov word ptr [ecx + 4], 0x8E00      ; present, DPL 0, 32-bit interrupt gate
    shr edx, 16
    mov word ptr [ecx + 6], dx          ; offset 31:16
.else
    lea rcx, [idt_table + rax * 8]
    lea rcx, [rcx + rax * 8]            ; 16 bytes per gate
    mov word ptr [rcx], dx              ; offset 15:0
    mov word ptr [rcx + 2], cs
    mov word ptr [rcx + 4], 0x8E00      ; present, DPL 0, 64-bit interrupt gate, IST 0
    shr edx, 16
    mov word ptr [rcx + 6], dx          ; offset 31:16
    mov dword ptr [rcx + 8], 0          ; offset 63:32 (kvmlab programs live below 4 GiB)
    mov dword ptr [rcx + 12], 0         ; reserved
.endif
    ret

; idt_load: points this vCPU's IDTR at the table (LIDT takes a limit and a base).
idt_load:
.if BITS == 32
    .byte 0x0f, 0x01, 0x1d              ; lidt [idt_pointer], without the 0x66 prefix keystone
    .long idt_pointer                   ; adds (with it LIDT would load only 24 bits of base)
.else
    lidt [idt_pointer]
.endif
    ret

.if BITS == 16
idt_pointer:
    .word 256 * 4 - 1                   ; the IVT: 256 vectors of 4 bytes
    .long 0
.else
.align 16
idt_table:
.if BITS == 32
    .space 256 * 8
idt_pointer:
    .word 256 * 8 - 1
    .long idt_table
.else
    .space 256 * 16
idt_pointer:
    .word 256 * 16 - 1
    .quad idt_table
.endif
.endif
.endm
