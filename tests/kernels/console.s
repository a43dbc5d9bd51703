# console.s: the test kernels' output to COM1 (included by smp.s and absent.s: one copy).
#
# putc polls the 16550's line status register until THRE (transmitter holding register
# empty) before each byte, as a driver for a real UART must. Every routine keeps the
# registers it does not return in. Needs COM1 defined by the including file.

putc:                                   # al
    push edx
    push eax
    mov dx, COM1 + 5
putc_wait:
    in al, dx
    test al, 0x20                       # THRE
    jz putc_wait
    pop eax
    mov dx, COM1
    out dx, al
    pop edx
    ret

puts:                                   # esi: NUL-terminated
    push eax
    push esi
puts_loop:
    lodsb
    test al, al
    jz puts_done
    call putc
    jmp puts_loop
puts_done:
    pop esi
    pop eax
    ret

put_hex:                                # eax, as 0x followed by 8 digits
    push eax
    push ecx
    push edx
    mov edx, eax
    mov al, '0'
    call putc
    mov al, 'x'
    call putc
    mov ecx, 8
hex_loop:
    rol edx, 4
    mov eax, edx
    and eax, 0xF
    add al, '0'
    cmp al, '9'
    jbe hex_digit
    add al, 'a' - '0' - 10
hex_digit:
    call putc
    loop hex_loop
    pop edx
    pop ecx
    pop eax
    ret
