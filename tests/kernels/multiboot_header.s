# multiboot_header.s: the Multiboot v1 header of the small test kernels (included by spin.s and
# triple.s: one copy). Flags 3: page-aligned modules and memory information; an ELF, so the
# loader takes the load addresses from its program headers (Multiboot 0.6.96, section 3.1.1).
.section .multiboot, "a"
.align 4
.long 0x1BADB002
.long 0x00000003
.long -(0x1BADB002 + 0x00000003)
