; mailbox_irq.asm: the ping-pong driven by interrupts: each vCPU sleeps in HLT between rounds.
;
; What it shows: the end of polling. In mailbox_pingpong each vCPU spins on an MMIO register,
; and every poll is an exit; here a vCPU that waits executes HLT, and leaves the guest only
; when the other rings the mailbox's DOORBELL register: kvmlab raises the mailbox's vector at
; the vCPU named, injects it (KVM_INTERRUPT, when the guest's IF allows: the interrupt
; window), and the CPU runs the handler the guest put in its interrupt table (an IVT in real
; mode, an IDT in protected and long mode). A round costs a handful of exits, whatever the
; other vCPU takes to answer, and a waiting vCPU's thread sleeps instead of spinning.
;
; vCPU 0 writes round k to PING and rings vCPU 1; vCPU 1's handler copies PING to PONG and
; rings vCPU 0; vCPU 0's handler notes PONG, and when it reads k the round is done. Each
; handler first writes its vector to IRQ_ACK, so kvmlab can time the delivery.
;
; The wait is the race-free idiom every kernel uses: CLI, look, then STI; HLT. STI delays
; interrupts by one instruction (its interrupt shadow, Intel SDM Vol. 3A 6.8.3), so an
; interrupt that came after the look is taken at the HLT and wakes it, never lost before it.
;
; ROUNDS rounds, then both stop (CLI; HLT); ROUNDS = 0 plays forever. VECTOR is the vector the
; mailbox raises (32-255). Needs 2 vCPUs; vCPUs from 2 up have no part and stop at once.
;
; On entry: DI = this vCPU's index. Results (16 bytes per vCPU at RESULTS): dword 0 = rounds
; completed, dword 1 = interrupts handled, dword 2 = HLTs executed, dword 3 = the value the
; last interrupt brought (PONG for vCPU 0, PING for vCPU 1).

.include "idt.asm"

.if BITS == 16
    mov ax, MAILBOX >> 4
    mov es, ax                          ; ES:offset reaches the mailbox; DS = 0 the rest
    .equ DEVICE, 0
.else
    .equ DEVICE, MAILBOX
.endif

start:
    mov ebx, edi
    shl ebx, 4
    add ebx, RESULTS                    ; ebx -> this vCPU's results (handlers use it too)
    cmp edi, 1
    ja stop
    IDT_SET VECTOR, on_mailbox
    IDT_LOAD
    mov dword ptr es:[DEVICE + MB_IRQ_VECTOR], VECTOR
    xor ecx, ecx                        ; ecx = round
    cmp edi, 1
    je pong

ping:
    inc ecx
    mov dword ptr es:[DEVICE + MB_PING], ecx
    mov dword ptr es:[DEVICE + MB_DOORBELL], 1      ; exit: vCPU 1 gets the interrupt
wait_pong:
    cli
    cmp dword ptr [ebx + 12], ecx       ; did the handler see round k come back?
    je round_done
    inc dword ptr [ebx + 8]
    sti
    hlt                                 ; sleeps until an interrupt; its handler runs first
    jmp wait_pong
round_done:
    sti
    mov dword ptr [ebx], ecx
.if ROUNDS
    cmp ecx, ROUNDS
    jne ping
    jmp stop
.else
    jmp ping
.endif

pong:                                   ; vCPU 1: all the work is in the handler
    cli
.if ROUNDS
    cmp dword ptr [ebx], ROUNDS
    jae stop
.endif
    inc dword ptr [ebx + 8]
    sti
    hlt
    jmp pong

stop:
    cli
    hlt                                 ; HLT with IF=0: the vCPU is done

; The handler: IF is 0 here (an interrupt gate), so it runs to its IRET undisturbed.
on_mailbox:
    mov dword ptr es:[DEVICE + MB_IRQ_ACK], VECTOR  ; first: kvmlab stamps the delivery
    SAVE_SCRATCH
    inc dword ptr [ebx + 4]
    cmp edi, 1
    je answer
    mov eax, dword ptr es:[DEVICE + MB_PONG]        ; vCPU 0: note what came back
    mov dword ptr [ebx + 12], eax
    RESTORE_SCRATCH
    INTERRUPT_RETURN
answer:
    mov eax, dword ptr es:[DEVICE + MB_PING]        ; vCPU 1: answer with the same value
    mov dword ptr [ebx + 12], eax
    mov dword ptr es:[DEVICE + MB_PONG], eax
    mov dword ptr [ebx], eax
    mov dword ptr es:[DEVICE + MB_DOORBELL], 0      ; exit: vCPU 0 gets the interrupt
    RESTORE_SCRATCH
    INTERRUPT_RETURN

IDT_LIBRARY
