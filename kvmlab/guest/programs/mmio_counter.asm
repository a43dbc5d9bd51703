; mmio_counter.asm: each vCPU counts on its own register of the mailbox device.
;
; What it shows: MMIO exits. The mailbox sits at guest physical MAILBOX, where there is no
; RAM, so every access to it leaves the guest: KVM stops the vCPU with KVM_EXIT_MMIO, giving
; the address, size and (for a write) the data; kvmlab's bus calls the device; the next KVM_RUN
; completes the instruction (for a read, with the value the device returned).
;
; vCPU n writes 1, 2, 3, ... to COUNTER<n> (MAILBOX + 0x100 + 4n): one MMIO write exit per
; iteration. Every READ_EVERY-th iteration it reads the register back (one MMIO read exit) and
; checks it holds what it wrote (READ_EVERY = 0: never). ITERATIONS iterations, then HLT;
; ITERATIONS = 0 counts forever.
;
; Real mode cannot address 0xa0000 with a 16-bit offset, so there the program points ES at the
; device (ES = MAILBOX / 16) and uses offsets from it; protected and long mode are flat.
;
; On entry: DI = this vCPU's index.
; Results (16 bytes per vCPU at RESULTS): dword 0 = MMIO writes made, dword 1 = MMIO reads
; made, dword 2 = read-backs that did not match.

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
    add ebx, RESULTS                    ; ebx -> this vCPU's results (in RAM: no exit)
    mov edx, edi
    shl edx, 2
    add edx, DEVICE + MB_COUNTERS       ; edx -> COUNTER<index>
    xor ecx, ecx
count:
    inc ecx
    mov dword ptr es:[edx], ecx         ; exit: MMIO write
    inc dword ptr [ebx]
.if READ_EVERY
    test ecx, READ_EVERY - 1
    jnz next
    mov eax, dword ptr es:[edx]         ; exit: MMIO read
    inc dword ptr [ebx + 4]
    cmp eax, ecx
    je next
    inc dword ptr [ebx + 8]
.endif
next:
.if ITERATIONS
    cmp ecx, ITERATIONS
    jne count
    hlt
.else
    jmp count
.endif
