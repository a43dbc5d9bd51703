; busy_loop.asm: a CPU-bound loop that never leaves the guest.
;
; What it shows: the kick. Nothing in this loop makes KVM return to user space, so a vCPU
; thread running it sits inside KVM_RUN indefinitely. Pause still works: kvmlab sets
; kvm_run.immediate_exit and sends SIGRTMIN to the vCPU's thread, KVM_RUN returns EINTR, and
; the thread reads its Pause event. The loop counter (in RAM) stops moving while paused.
;
; On KVM with VT-x/AMD-V this runs at native speed; under a nested, paravirtualized KVM such as
; kvm_pvm the kernel emulates each instruction (a few million per second).
;
; On entry: DI = this vCPU's index. Never ends on its own.
; Results (16 bytes per vCPU at RESULTS): dwords 0-1 = a 64-bit count of loop iterations.

start:
    mov ebx, edi
    shl ebx, 4
    add ebx, RESULTS
spin:
    add dword ptr [ebx], 1
    adc dword ptr [ebx + 4], 0
    jmp spin
