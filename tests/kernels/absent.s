# absent.s: a Multiboot kernel that probes hardware kvmlab does not have, as firmware and
# kernels do, and checks that it sees what a PC shows (GNU as, Intel syntax, 32-bit).
#
# The PCI host bridge (configuration mechanism #1: CONFIG_ADDRESS at 0xcf8, CONFIG_DATA at
# 0xcfc) answers for a bus with no devices: every configuration read is all ones (vendor ID
# 0xffff: the slot is empty) and writes go nowhere. A port or an MMIO address no device
# decodes floats high: all ones, writes dropped. Each check that sees anything else ends the
# machine at once with its own number as the debug-exit code (after printing what it got on
# COM1); all passed: code 0. Interrupts stay off; nothing here needs RAM beyond the kernel.

.intel_syntax noprefix
.set MB_MAGIC, 0x1BADB002
.set MB_FLAGS, 0x00000003
.set COM1, 0x3f8
.set COM2, 0x2f8                     # no second UART
.set NOBODY_PORT, 0xc000             # no device decodes it
.set PCI_CONFIG_ADDRESS, 0xcf8
.set PCI_CONFIG_DATA, 0xcfc
.set PCI_ENABLE, 0x80000000
.set ABSENT_MMIO, 0xC0000000         # below 4 GiB, above RAM, no device
.set DEBUG_EXIT, 0xf4

.section .multiboot, "a"
.align 4
.long MB_MAGIC
.long MB_FLAGS
.long -(MB_MAGIC + MB_FLAGS)

# eax must equal value, else the machine exits with code: mov does not touch the flags
.macro expect value, code
    cmp eax, \value
    mov ecx, \code
    jne fail
.endm

.section .text, "ax"
.code32
.global _start
_start:
    cli
    mov esp, offset stack_top

    # 1: CONFIG_ADDRESS latches a dword and reads it back (how Linux finds mechanism #1)
    mov dx, PCI_CONFIG_ADDRESS
    mov eax, PCI_ENABLE                 # bus 0, device 0, function 0, register 0
    out dx, eax
    in eax, dx
    expect PCI_ENABLE, 1

    # 2: 00:00.0 vendor and device ID: no device there, all ones
    mov dx, PCI_CONFIG_DATA
    in eax, dx
    expect 0xffffffff, 2

    # 3: devices 1 to 31 of bus 0, function 0, the same (a firmware's bus scan)
    mov ebx, 1
scan:
    mov eax, ebx
    shl eax, 11                         # device number: bits 15:11
    or eax, PCI_ENABLE
    mov dx, PCI_CONFIG_ADDRESS
    out dx, eax
    mov dx, PCI_CONFIG_DATA
    in eax, dx
    expect 0xffffffff, 3
    inc ebx
    cmp ebx, 32
    jb scan

    # 4: a word read of the device ID (CONFIG_DATA + 2): 0xffff
    mov dx, PCI_CONFIG_DATA + 2
    xor eax, eax
    in ax, dx
    expect 0xffff, 4

    # 5: a write to configuration data goes nowhere: the register still reads all ones
    mov dx, PCI_CONFIG_DATA
    mov eax, 0x12345678
    out dx, eax
    in eax, dx
    expect 0xffffffff, 5

    # 6: COM2's receive buffer: open bus, 0xff
    mov dx, COM2
    xor eax, eax
    in al, dx
    expect 0xff, 6

    # 7: a write there is dropped: it still reads 0xff
    mov al, 0
    out dx, al
    xor eax, eax
    in al, dx
    expect 0xff, 7

    # 8: a dword from a port nothing decodes: 0xffffffff
    mov dx, NOBODY_PORT
    in eax, dx
    expect 0xffffffff, 8

    # 9: a dword of MMIO where nothing is: all ones
    mov eax, [ABSENT_MMIO]
    expect 0xffffffff, 9

    # 10: a byte of it: 0xff
    movzx eax, byte ptr [ABSENT_MMIO + 1]
    expect 0xff, 10

    # 11: a write there is dropped: it still reads all ones
    mov dword ptr [ABSENT_MMIO], 0
    mov eax, [ABSENT_MMIO]
    expect 0xffffffff, 11

    lea esi, msg_passed
    call puts
    xor eax, eax
    jmp exit

fail:                                   # ecx: the check, eax: what it read
    mov ebx, eax
    lea esi, msg_check
    call puts
    mov eax, ecx
    call put_hex
    lea esi, msg_got
    call puts
    mov eax, ebx
    call put_hex
    mov al, 10
    call putc
    mov eax, ecx
exit:
    mov dx, DEBUG_EXIT
    out dx, eax
halt:
    hlt
    jmp halt

.include "console.s"

.section .data
msg_passed: .asciz "absent hardware: every check saw what a PC shows\n"
msg_check: .asciz "absent hardware: check "
msg_got: .asciz " failed, read "

.section .bss
.align 16
stack: .skip 4096
stack_top:
