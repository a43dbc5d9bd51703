; exit_cost.asm: what one exit to user space costs, timed by the guest itself with RDTSC.
;
; What it shows: the price of emulating a device in the VMM. Each iteration reads the time
; stamp counter, writes one byte to the UART's scratch register (SERIAL + 7: a port-I/O exit,
; handled by the VMM's device model in user space), and reads the counter again. The
; difference is the whole round trip as the guest sees it: the VM exit, KVM handing the exit to
; the VMM's thread, the device, the next KVM_RUN and the VM entry. A VMM with a faster exit
; path shows fewer cycles. (RDTSC is not serializing; over thousands of cycles that is noise.)
;
; On entry: DI = this vCPU's index.
; Results (16 bytes per vCPU at RESULTS): dwords 0-1 = total cycles (64-bit), dword 2 = the
; fewest cycles one exit took, dword 3 = exits timed. ITERATIONS exits, then HLT.

start:
    mov ebx, edi
    shl ebx, 4
    add ebx, RESULTS                    ; ebx -> this vCPU's results (in RAM: no exit)
    mov dword ptr [ebx + 8], 0xFFFFFFFF
    mov ecx, ITERATIONS
again:
    rdtsc
    mov esi, eax                        ; low half is enough: one exit is far below 2^32 cycles
    mov dx, SERIAL + 7
    mov al, cl
    out dx, al                          ; exit: KVM_EXIT_IO out, 1 byte, to the scratch register
    rdtsc
    sub eax, esi
    add dword ptr [ebx], eax
    adc dword ptr [ebx + 4], 0
    cmp eax, dword ptr [ebx + 8]
    jae counted
    mov dword ptr [ebx + 8], eax
counted:
    inc dword ptr [ebx + 12]
    dec ecx
    jnz again
    hlt
