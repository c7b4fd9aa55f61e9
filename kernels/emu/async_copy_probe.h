// A test kernel for the emulated cp.async (tests/kernels_async_copy.rs), built into the
// harness only: it is not part of kernels/ABI.md and never reaches NVRTC. It copies through
// gemm.cu's own cp_async_16 / cp_async_commit / cp_async_wait wrappers.
//
// 32 threads. Thread t copies 16 bytes from src + 8t + offset (elements) with src-size
// sizes[t] into chunk t of a __shared__ buffer and commits; then, by `mode`:
//   0  waits, __syncthreads(), writes the buffer to dst (the correct use);
//   1  __syncthreads(), writes the buffer to dst, then waits (reads before the wait);
//   2  writes nothing and never waits (the group is pending at the block's end);
//   3  copies from shared memory instead of src (not a global address).
#ifndef SETPOINT_EMU_ASYNC_COPY_PROBE_H
#define SETPOINT_EMU_ASYNC_COPY_PROBE_H

struct alignas(16) ProbeSmem {
    unsigned short buf[32 * 8];
    unsigned short other[8];
};

extern "C" __global__ void emu_cp_async_probe(const unsigned short* src, const unsigned* sizes,
                                              unsigned short* dst, int offset, int mode) {
    __shared__ ProbeSmem sm;
    const int t = threadIdx.x;
    const unsigned short* from = mode == 3 ? sm.other : src + 8 * t + offset;
    cp_async_16(&sm.buf[8 * t], from, (int)sizes[t]);
    cp_async_commit();
    if (mode == 0) cp_async_wait<0>();
    if (mode == 2) return;
    __syncthreads();
    for (int j = 0; j < 8; ++j) {
        dst[8 * t + j] = sm.buf[8 * ((t + 1) % 32) + j];  // another thread's copy
    }
    cp_async_wait<0>();
}

#endif
