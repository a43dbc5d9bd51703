; exceptions.asm: the CPU's own exceptions, caught by handlers that fix the cause or step past it.
;
; What it shows: exceptions use the same table as interrupts (vectors 0-31 are the CPU's:
; Intel SDM Vol. 3A, 6.3 "Sources of Interrupts" and table 6-1). This program takes three:
;
;   #DE  vector 0, divide error: DIV by zero
;   #UD  vector 6, invalid opcode: UD2, an instruction defined to be invalid
;   #PF  vector 14, page fault (long mode, the only mode here with paging): a write to a
;        linear address no page table maps; CR2 holds the address, the error code pushed on
;        the stack says why (bit 0 = 0: not present; bit 1 = 1: a write)
;
; All three are faults (SDM 6.5): the saved instruction pointer is the faulting instruction
; itself, so a handler that removes the cause returns and the instruction runs again. The #PF
; handler does that: it maps the missing gigabyte (a spare page directory, one 2 MiB page onto
; physical 0) and the write, retried, lands at physical FAULT_TARGET. A DIV by zero cannot be
; fixed, so the #DE and #UD handlers do what a kernel's exception tables do: point the saved
; instruction pointer at the code after the instruction, and return there.
;
; No IDT entry for a vector (or no IDT) is what turns an exception into a triple fault: the
; CPU cannot deliver it, nor the #NP that follows (a not-present gate; #GP for an entry beyond
; the table's limit), nor the #DF after that.
;
; vCPU 0 takes #DE and #UD REPEAT times each, then (long mode) one #PF, then stops; the other
; vCPUs stop at once. Results (vCPU 0, at RESULTS): dword 0 = divide errors handled, dword 1 =
; invalid opcodes handled, dword 2 = page faults handled, dword 3 = the last #PF error code.

.include "idt.asm"

.equ FAULT_TARGET, 0x400                ; where the write lands once the handler mapped it
.equ FAULT_LINEAR, 0x100000400          ; 4 GiB + FAULT_TARGET: kvmlab maps only the first 4 GiB
.equ FAULT_MAGIC, 0x600DF00D

start:
    test edi, edi
    jnz stop
    IDT_SET 0, on_divide_error
    IDT_SET 6, on_invalid_opcode
.if BITS == 64
    IDT_SET 14, on_page_fault
.endif
    IDT_LOAD
    mov esi, REPEAT
again:
    xor edx, edx
    mov eax, 1
    xor ecx, ecx
    div ecx                             ; #DE: EDX:EAX / 0
after_divide:
    ud2                                 ; #UD
after_ud2:
    dec esi
    jnz again
.if BITS == 64
    mov rax, FAULT_LINEAR
    mov dword ptr [rax], FAULT_MAGIC    ; #PF; retried after the handler mapped the page
.endif
stop:
    cli
    hlt

; The saved instruction pointer is on top of the stack (no error code for #DE and #UD).
on_divide_error:
    inc dword ptr [RESULTS]
.if BITS == 64
    mov qword ptr [rsp], after_divide
.elseif BITS == 32
    mov dword ptr [esp], after_divide
.else
    mov word ptr [esp], after_divide
.endif
    INTERRUPT_RETURN

on_invalid_opcode:
    inc dword ptr [RESULTS + 4]
.if BITS == 64
    mov qword ptr [rsp], after_ud2
.elseif BITS == 32
    mov dword ptr [esp], after_ud2
.else
    mov word ptr [esp], after_ud2
.endif
    INTERRUPT_RETURN

.if BITS == 64
; #PF pushes an error code below the saved RIP: [rsp] = error code, [rsp + 8] = RIP.
on_page_fault:
    push rax
    push rcx
    inc dword ptr [RESULTS + 8]
    mov eax, dword ptr [rsp + 16]       ; the error code
    mov dword ptr [RESULTS + 12], eax
    mov rax, cr2                        ; the linear address that faulted
    shr rax, 30                         ; its page-directory-pointer index (1 GiB each)
    mov rcx, cr3
    mov rcx, qword ptr [rcx]            ; PML4 entry 0 (the address is below 512 GiB)
    and rcx, -4096                      ; -> the page-directory-pointer table
    lea rcx, [rcx + rax * 8]
    mov eax, spare_directory
    or eax, 3                           ; present, writable
    mov qword ptr [rcx], rax            ; that gigabyte now has a page directory
    pop rcx
    pop rax
    add rsp, 8                          ; drop the error code: IRETQ expects RIP on top
    INTERRUPT_RETURN                    ; to the faulting write, which runs again
.endif

IDT_LIBRARY

.if BITS == 64
.align 4096
spare_directory:                        ; one 2 MiB page: linear 4 GiB -> physical 0
    .quad 0x83                          ; present, writable, page size (2 MiB)
    .space 4096 - 8
.endif
