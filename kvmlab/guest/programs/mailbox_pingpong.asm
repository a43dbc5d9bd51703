; mailbox_pingpong.asm: two vCPUs hand a number back and forth through the mailbox device.
;
; What it shows: vCPUs are real threads running at the same time. vCPU 0 writes round k to
; PING, then polls PONG until it reads k back; vCPU 1 polls PING until it reads k, then writes
; k to PONG. Every write and every poll is an MMIO exit, handled on the vCPU's own thread, so
; the exit rate shows how fast the two threads can hand a value over. Pause vCPU 1 and vCPU 0
; keeps polling (its reads go on) but no round completes until vCPU 1 resumes.
;
; ROUNDS rounds, then both HLT; ROUNDS = 0 plays forever. Needs at least 2 vCPUs; vCPUs from 2
; up have no part and halt at once.
;
; On entry: DI = this vCPU's index.
; Results (16 bytes per vCPU at RESULTS): dword 0 = rounds completed, dword 1 = polls made.

.if BITS == 16
    mov ax, MAILBOX >> 4
    mov es, ax
    .equ DEVICE, 0
.else
    .equ DEVICE, MAILBOX
.endif

start:
    mov ebx, edi
    shl ebx, 4
    add ebx, RESULTS
    mov esi, DEVICE + MB_PING           ; esi -> PING
    mov edx, DEVICE + MB_PONG           ; edx -> PONG
    xor ecx, ecx                        ; ecx = round
    cmp edi, 1
    je pong
    ja done

ping:
    inc ecx
    mov dword ptr es:[esi], ecx    ; exit: MMIO write
wait_pong:
    inc dword ptr [ebx + 4]
    mov eax, dword ptr es:[edx]    ; exit: MMIO read
    cmp eax, ecx
    jne wait_pong
    mov dword ptr [ebx], ecx
.if ROUNDS
    cmp ecx, ROUNDS
    jne ping
    jmp done
.else
    jmp ping
.endif

pong:
    inc ecx
wait_ping:
    inc dword ptr [ebx + 4]
    mov eax, dword ptr es:[esi]    ; exit: MMIO read
    cmp eax, ecx
    jne wait_ping
    mov dword ptr es:[edx], ecx    ; exit: MMIO write
    mov dword ptr [ebx], ecx
.if ROUNDS
    cmp ecx, ROUNDS
    jne pong
.else
    jmp pong
.endif

done:
    hlt
