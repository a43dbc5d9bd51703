; hello.asm: every vCPU says hello over the serial port, one line each, in turn.
;
; What it shows: port I/O exits. `out dx, al` to the UART's transmit register (port SERIAL)
; cannot complete inside the guest: KVM stops the vCPU with KVM_EXIT_IO, kvmlab's 16550 model
; appends the byte to the machine's console, and the next KVM_RUN resumes the guest. Before
; every byte the program polls the line status register (SERIAL+5) for "transmitter empty"
; as a real driver does, so each character costs two exits: an IN and an OUT.
;
; The vCPUs share memory. Each waits until the shared `turn` word holds its own index, prints
; its line, then passes the turn on: lines never interleave and come out in vCPU order.
;
; On entry: DI = this vCPU's index. Ends with HLT (KVM_EXIT_HLT: this vCPU is done).
; Results (16 bytes per vCPU at RESULTS): dword 0 = characters sent, dword 1 = status polls.

start:
    mov ebx, edi
    shl ebx, 4
    add ebx, RESULTS                    ; ebx -> this vCPU's results
    mov esi, turn                       ; esi -> the shared turn word
wait_turn:
    mov eax, dword ptr [esi]
    cmp eax, edi
    jne wait_turn

    mov esi, message
print_message:
    mov al, byte ptr [esi]
    test al, al
    jz print_index
    call put_char
    inc esi
    jmp print_message

print_index:                            ; the index in decimal, up to 3 digits
    mov eax, edi
    xor edx, edx
    mov ecx, 100
    div ecx                             ; eax = hundreds, edx = the rest
    mov ebp, edx                        ; (ebp only as a register: [ebp] would use SS)
    test eax, eax
    jz tens
    add al, '0'
    call put_char
    mov eax, ebp
    xor edx, edx
    mov ecx, 10
    div ecx
    add al, '0'
    call put_char
    jmp ones
tens:
    mov eax, ebp
    xor edx, edx
    mov ecx, 10
    div ecx
    test eax, eax
    jz ones
    add al, '0'
    call put_char
ones:
    mov eax, ebp
    xor edx, edx
    mov ecx, 10
    div ecx
    mov al, dl
    add al, '0'
    call put_char
    mov al, 10                          ; newline
    call put_char

    mov eax, edi
    inc eax
    mov esi, turn
    mov dword ptr [esi], eax            ; your turn, next vCPU
    hlt

put_char:                               ; al = the character; keeps esi, edi, ebx, ebp
    mov cl, al
    mov dx, SERIAL + 5                  ; line status register
wait_empty:
    inc dword ptr [ebx + 4]
    in al, dx                           ; exit: KVM_EXIT_IO, direction in
    test al, 0x20                       ; THRE: transmit holding register empty
    jz wait_empty
    mov dx, SERIAL
    mov al, cl
    out dx, al                          ; exit: KVM_EXIT_IO, direction out
    inc dword ptr [ebx]
    ret

    .align 4
turn:
    .long 0
message:
    .ascii "Hello from vCPU "
    .byte 0
