/*
 * kvmlab: the emulated engine's kick check, in C so that it needs no GIL.
 *
 * Unicorn calls kvmlab_on_block at the start of every translation block of a vCPU, on the
 * vCPU's own thread. If a kick is pending (the vCPU's kvm_run.immediate_exit byte is set),
 * it records that it stopped the run and stops emulation there: between two instructions,
 * where nothing is in flight, so no instruction runs twice (see engines/emulated.py).
 * Written in Python, this check costs a GIL round trip per block (about 1 us), and a vCPU
 * spinning in RAM then competes for the GIL with every other vCPU; in C a spinning vCPU
 * runs without the GIL, as a KVM vCPU runs without it inside KVM_RUN.
 */
#include <stdint.h>

struct kvmlab_kick {
    volatile uint8_t *pending;   /* this vCPU's kvm_run.immediate_exit */
    int (*stop)(void *uc);       /* Unicorn's uc_emu_stop */
    volatile uint8_t kicked;     /* set when this hook stopped the run */
};

void kvmlab_on_block(void *uc, uint64_t address, uint32_t size, void *user_data)
{
    struct kvmlab_kick *kick = user_data;
    (void)address;
    (void)size;
    if (*kick->pending) {
        kick->kicked = 1;
        kick->stop(uc);
    }
}
