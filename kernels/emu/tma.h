// TMA (the tensor memory accelerator of sm_90) 2D tile loads, emulated on the threads of
// kernels/emu/cuda_emu.h for gemm_bf16_wgmma (kernels/gemm_wgmma.cu):
//
//   cuTensorMapEncodeTiled(map, BFLOAT16, 2, global, dims, strides, box, {1, 1},
//                          INTERLEAVE_NONE, swizzle, l2, FLOAT_OOB_FILL_NONE)
//                                  -> emu_tensor_map_encode_tiled(map, global, dims, stride, box,
//                                                                 swizzle)  (by the harness)
//   cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes
//       [dst], [map, {c0, c1}], [bar];             -> emu_tma_load_2d(dst, map, c0, c1, bar)
//
// The tensor map. On a GPU it is a 128-byte opaque CUtensorMap made by the driver; here the
// same 128 bytes hold the encode call's parameters (EmuTensorMap), for the one case the
// project uses: 2 dimensions of 2-byte elements (bf16), element strides 1, no interleave, out
// of bounds filled with zeros. Dimension 0 is the contiguous one; `stride` is the byte
// distance between consecutive indices of dimension 1. The encode checks what the CUDA
// driver documents for cuTensorMapEncodeTiled: the global address 16-byte aligned, the
// stride a multiple of 16 below 2^40, dimensions in [1, 2^32], box dimensions in [1, 256]
// with box[0] * 2 bytes a multiple of 16, and under a swizzle box[0] * 2 bytes at most the
// swizzle span. It also refuses a swizzled box narrower than the span: how the hardware lays
// out such rows is not modelled.
//
// The copy. The box at coordinates (c0, c1) lands in shared memory row by row (box[1] rows of
// box[0] elements, densely), elements outside [0, dims) read as zero, and the whole box,
// zeros included, counts as box[0] * box[1] * 2 transaction bytes on the mbarrier. The
// swizzle permutes the 16-byte chunks of each 128-byte line by shared address (PTX ISA,
// "Tensor copy swizzling modes"; CUTLASS maps these modes to Swizzle<B,4,3> on byte
// addresses, cute/atom/copy_traits_sm90_tma_swizzle.hpp): address bits [4, 4+B) are XORed
// with bits [7, 7+B), B = 1, 2, 3 for the 32-, 64- and 128-byte modes. The same function
// serves the wgmma descriptors (wgmma.h), so the two agree by construction; only a GPU can
// confirm that they agree with the hardware.
//
// When it lands depends on the schedule, as cp.async's does: at issue under schedules 2 and
// 3, under 0 and 1 only when a thread waits on its mbarrier (or when no thread can run), and
// under the random schedules each copy draws one of the two. A kernel that reads a stage
// before waiting on its barrier then sees the poison, or an older stage, under some schedules
// and the data under others. What it checks: the destination in shared memory, 128-byte
// aligned, the box inside it; the map made by the encode; the barrier initialised; no copy
// still in flight at the end of the block.
#ifndef SETPOINT_EMU_TMA_H
#define SETPOINT_EMU_TMA_H

namespace emu {

// CU_TENSOR_MAP_SWIZZLE_* numbering (the driver's): 0 none, 1 32B, 2 64B, 3 128B.
enum TmaSwizzle : uint32_t { kSwizzleNone = 0, kSwizzle32 = 1, kSwizzle64 = 2, kSwizzle128 = 3 };

constexpr uint32_t kTensorMapMagic = 0x7e4a5001u;

struct alignas(64) EmuTensorMap {
    uint32_t magic;
    uint32_t swizzle;
    const unsigned char* global;
    uint64_t dims[2];
    uint64_t stride;  // bytes between consecutive indices of dimension 1
    uint32_t box[2];
};
static_assert(sizeof(EmuTensorMap) <= 128, "a CUtensorMap is 128 bytes");

// Bytes of one swizzle span: 16 (no swizzle: one chunk), 32, 64, 128.
inline uint32_t swizzle_span(uint32_t swizzle) { return swizzle == kSwizzleNone ? 16 : 16u << swizzle; }

// The shared address of byte `addr` under a swizzle of `span` bytes (16: none): the 16-byte
// chunk index within the span, address bits [4, 4+B), XOR the 128-byte line index bits
// [7, 7+B), B = log2(span / 16).
inline uint32_t swizzle_address(uint32_t addr, uint32_t span) {
    const uint32_t mask = span / 16 - 1;
    return addr ^ (((addr >> 7) & mask) << 4);
}

struct TmaCopy {
    unsigned char* dst;
    EmuTensorMap map;
    int c0, c1;
    void* bar;
    bool landed;
};

struct TmaState {
    std::vector<TmaCopy> inflight;
    uint64_t issued = 0;
};

inline TmaState& tma_state() {
    static TmaState s;
    return s;
}

// Whether the copy now issued lands at once (else when its barrier is waited on).
inline bool tma_lands_at_issue() {
    const unsigned seed = schedule_seed();
    if (seed < 4) return seed == 2 || seed == 3;
    uint64_t z = ((uint64_t)seed << 40 ^ (uint64_t)blockIdx.x << 20 ^ 0x5a5a) +
                 ++tma_state().issued * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return ((z ^ (z >> 31)) & 1) != 0;
}

inline void tma_perform(TmaCopy& c) {
    if (c.landed) return;
    c.landed = true;
    const EmuTensorMap& m = c.map;
    const uint32_t base = shared_offset(c.dst, "cp.async.bulk.tensor");
    const uint32_t span = swizzle_span(m.swizzle);
    for (uint32_t y = 0; y < m.box[1]; ++y) {
        for (uint32_t x = 0; x < m.box[0]; ++x) {
            const long long gx = (long long)c.c0 + x, gy = (long long)c.c1 + y;
            uint16_t v = 0;
            if (gx >= 0 && gy >= 0 && (uint64_t)gx < m.dims[0] && (uint64_t)gy < m.dims[1]) {
                std::memcpy(&v, m.global + (uint64_t)gy * m.stride + (uint64_t)gx * 2, 2);
            }
            const uint32_t at = swizzle_address(base + (y * m.box[0] + x) * 2, span);
            std::memcpy(shared_at(at), &v, 2);
        }
    }
    mbarrier_complete_tx(c.bar, (long long)m.box[0] * m.box[1] * 2);
}

inline void tma_begin_block() {
    tma_state().inflight.clear();
    tma_state().issued = 0;
}

// Lands every copy still in flight when no thread can run; whether there was one.
inline bool tma_land_all() {
    bool any = false;
    for (TmaCopy& c : tma_state().inflight) {
        if (!c.landed) {
            tma_perform(c);
            any = true;
        }
    }
    tma_state().inflight.clear();
    return any;
}

inline void tma_land_for(const void* bar) {
    std::vector<TmaCopy>& v = tma_state().inflight;
    for (TmaCopy& c : v) {
        if (c.bar == bar) tma_perform(c);
    }
    std::erase_if(v, [](const TmaCopy& c) { return c.landed; });
}

inline void tma_end_block() {
    const std::vector<TmaCopy>& v = tma_state().inflight;
    if (!v.empty()) {
        fail("TMA copy never waited for: the block ended with %zu cp.async.bulk.tensor copies "
             "whose mbarrier no thread waited on",
             v.size());
    }
}

}  // namespace emu

// cuTensorMapEncodeTiled for a 2D bf16 tensor (see above). Returns null, or why the driver
// would refuse the parameters.
inline const char* emu_tensor_map_encode_tiled(void* map, const void* global,
                                               const uint64_t dims[2], uint64_t stride,
                                               const uint32_t box[2], uint32_t swizzle) {
    if ((uintptr_t)map % 64 != 0) return "the tensor map is not 64-byte aligned";
    if ((uintptr_t)global % 16 != 0) return "the global address is not 16-byte aligned";
    for (int i = 0; i < 2; ++i) {
        if (dims[i] < 1 || dims[i] > (1ull << 32)) return "a dimension is outside [1, 2^32]";
        if (box[i] < 1 || box[i] > 256) return "a box dimension is outside [1, 256]";
    }
    if (stride % 16 != 0) return "the stride of dimension 1 is not a multiple of 16 bytes";
    if (stride >= (1ull << 40)) return "the stride of dimension 1 is not below 2^40 bytes";
    if (box[0] * 2 % 16 != 0) return "the box's inner dimension is not a multiple of 16 bytes";
    if (swizzle > emu::kSwizzle128) return "unknown swizzle mode";
    if (swizzle != emu::kSwizzleNone) {
        if (box[0] * 2 > emu::swizzle_span(swizzle)) {
            return "the box's inner dimension is wider than the swizzle span";
        }
        if (box[0] * 2 != emu::swizzle_span(swizzle)) {
            return "a swizzled box narrower than the swizzle span is not modelled";
        }
    }
    emu::EmuTensorMap m{};
    m.magic = emu::kTensorMapMagic;
    m.swizzle = swizzle;
    m.global = static_cast<const unsigned char*>(global);
    m.dims[0] = dims[0];
    m.dims[1] = dims[1];
    m.stride = stride;
    m.box[0] = box[0];
    m.box[1] = box[1];
    std::memset(map, 0, 128);
    std::memcpy(map, &m, sizeof m);
    return nullptr;
}

inline void emu_tma_load_2d(void* dst, const void* map, int c0, int c1, void* bar) {
    const char* what = "cp.async.bulk.tensor";
    emu::EmuTensorMap m;
    std::memcpy(&m, map, sizeof m);
    if (m.magic != emu::kTensorMapMagic) {
        emu::fail("%s: the tensor map was not made by cuTensorMapEncodeTiled", what);
    }
    const uint32_t at = emu::shared_offset(dst, what);
    if (at % 128 != 0) emu::fail("%s: shared destination %#x is not 128-byte aligned", what, at);
    const size_t bytes = (size_t)m.box[0] * m.box[1] * 2;
    if (!emu::in_shared(static_cast<unsigned char*>(dst) + bytes - 1)) {
        emu::fail("%s: the %zu-byte box at shared offset %#x runs past shared memory", what,
                  bytes, at);
    }
    emu::mbarrier_of(bar, what);
    emu::TmaCopy c{static_cast<unsigned char*>(dst), m, c0, c1, bar, false};
    if (emu::tma_lands_at_issue()) {
        emu::tma_perform(c);
    } else {
        emu::tma_state().inflight.push_back(c);
    }
}

#endif
