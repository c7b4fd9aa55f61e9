// The tensor-core instructions gemm_bf16 uses, emulated on the warps of kernels/emu/cuda_emu.h
// (which includes this file) from the fragment layouts of the PTX ISA.
#ifndef SETPOINT_EMU_TENSOR_CORE_H
#define SETPOINT_EMU_TENSOR_CORE_H

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lanes 8j..8j+7 give the addresses of the eight
// 16-byte rows of matrix j; each lane receives, in r[j], row lane/4 of matrix j, elements
// 2*(lane%4) (low half) and 2*(lane%4)+1 (high half).
inline void emu_ldmatrix_x4(unsigned r[4], const unsigned short* p) {
    const int me = emu::state().current;
    if (emu::warp_size(me / emu::kWarp) != emu::kWarp) emu::fail("ldmatrix in a partial warp");
    if ((uintptr_t)p % 16 != 0) emu::fail("ldmatrix: row address %p is not 16-byte aligned", p);
    std::memcpy(emu::slot(me), &p, sizeof p);
    emu::warp_barrier("ldmatrix");
    const int lane = emu::lane();
    for (int j = 0; j < 4; ++j) {
        const unsigned short* row;
        std::memcpy(&row, emu::slot(emu::warp_base() + j * 8 + lane / 4), sizeof row);
        r[j] = (unsigned)row[lane % 4 * 2] | (unsigned)row[lane % 4 * 2 + 1] << 16;
    }
    emu::next_bank();
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: the same row addresses, each matrix
// delivered transposed: r[j] holds column lane/4 of matrix j, rows 2*(lane%4) (low half)
// and 2*(lane%4)+1 (high half).
inline void emu_ldmatrix_x4_trans(unsigned r[4], const unsigned short* p) {
    const int me = emu::state().current;
    if (emu::warp_size(me / emu::kWarp) != emu::kWarp) emu::fail("ldmatrix in a partial warp");
    if ((uintptr_t)p % 16 != 0) emu::fail("ldmatrix: row address %p is not 16-byte aligned", p);
    std::memcpy(emu::slot(me), &p, sizeof p);
    emu::warp_barrier("ldmatrix.trans");
    const int lane = emu::lane();
    for (int j = 0; j < 4; ++j) {
        const unsigned short *lo, *hi;
        std::memcpy(&lo, emu::slot(emu::warp_base() + j * 8 + lane % 4 * 2), sizeof lo);
        std::memcpy(&hi, emu::slot(emu::warp_base() + j * 8 + lane % 4 * 2 + 1), sizeof hi);
        r[j] = (unsigned)lo[lane / 4] | (unsigned)hi[lane / 4] << 16;
    }
    emu::next_bank();
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, d, from the fragment layouts
// of the PTX ISA (groupID g = lane/4, t = lane%4):
//   A (16 x 16): register i holds row g + 8*(i%2), columns 2t + 8*(i/2) (low) and +1 (high);
//   B (16 x 8):  register i holds rows 2t + 8*i (low) and +1 (high), column g;
//   D (16 x 8):  element e is row g + 8*(e/2), column 2t + e%2.
// Products of bf16 values are exact in f32; they are summed in k order onto d.
inline void emu_mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2]) {
    const int me = emu::state().current;
    if (emu::warp_size(me / emu::kWarp) != emu::kWarp) emu::fail("mma.sync in a partial warp");
    unsigned regs[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    std::memcpy(emu::slot(me), regs, sizeof regs);
    emu::warp_barrier("mma.sync");
    const int base = emu::warp_base();
    auto half = [&](int lane, int reg, int high) {
        unsigned w;
        std::memcpy(&w, emu::slot(base + lane) + reg * sizeof(unsigned), sizeof w);
        return std::bit_cast<float>((high ? w >> 16 : w & 0xffffu) << 16);
    };
    auto A = [&](int row, int col) {
        return half(row % 8 * 4 + col % 8 / 2, row / 8 + col / 8 * 2, col % 2);
    };
    auto B = [&](int row, int col) { return half(col * 4 + row % 8 / 2, 4 + row / 8, row % 2); };
    const int g = emu::lane() / 4, t = emu::lane() % 4;
    for (int e = 0; e < 4; ++e) {
        const int row = g + e / 2 * 8, col = 2 * t + e % 2;
        float s = d[e];
        for (int kk = 0; kk < 16; ++kk) {
            s += A(row, kk) * B(kk, col);
        }
        d[e] = s;
    }
    emu::next_bank();
}

#endif
