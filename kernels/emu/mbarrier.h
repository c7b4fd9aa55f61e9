// mbarriers (the sm_90 barriers in shared memory that async copies and threads arrive on),
// emulated on the threads of kernels/emu/cuda_emu.h (which includes this file before
// tma.h and wgmma.h, which use it), for gemm_bf16_wgmma (kernels/gemm_wgmma.cu):
//
//   mbarrier.init.shared::cta.b64 [bar], count;           -> emu_mbarrier_init(bar, count)
//   mbarrier.arrive.shared::cta.b64 state, [bar];          -> emu_mbarrier_arrive(bar)
//   mbarrier.arrive.expect_tx.shared::cta.b64 _, [bar], n; -> emu_mbarrier_arrive_expect_tx
//   mbarrier.try_wait.parity.shared::cta.b64 p, [bar], q;  -> emu_mbarrier_try_wait_parity
//   complete_tx::bytes by a TMA copy (tma.h)               -> emu::mbarrier_complete_tx
//
// The model, from the PTX ISA ("Parallel synchronization and communication instructions:
// mbarrier"): an mbarrier counts, for its current phase, the arrivals still missing (reset to
// the expected count given at init when the phase completes) and a transaction count
// (expect_tx adds bytes, complete_tx removes them; it may go below zero in between). The
// phase completes when both are zero, and the next begins. try_wait.parity q is true when
// the phase of parity q has completed, that is, when the current phase's parity is not q
// (so a wait for parity 1 on a fresh barrier, whose phase 0 is current, passes at once: the
// "immediately preceding" phase of parity 1 counts as complete). The state a plain arrive
// returns is opaque on a GPU; here it is the number of completed phases.
//
// Waiting. Threads run as fibers, so a spinning try_wait would never let another thread
// arrive: a try_wait on a phase that has not completed blocks the thread until a phase of
// that barrier completes and then returns whether the awaited one has (a GPU may also
// return false early; kernels loop either way). A TMA copy that has not landed yet lands
// when a thread waits on its barrier (tma.h), or when no thread can run. If no thread can
// run, no copy is left to land, and threads wait on mbarriers, those phases can never
// complete: the block fails, naming the barrier, the parity awaited and what the phase
// still lacks, instead of hanging.
//
// What it checks: the barrier in the block's shared memory and 8-byte aligned, initialised
// before use, a count in [1, 2^20 - 1], no more arrivals in a phase than the count, no
// re-initialisation while threads wait on it. Not modelled: clusters (a CTA is its own
// cluster), mbarrier.inval, the arrive-drop and test_wait forms, and the memory-ordering
// semantics beyond "what landed before the phase completed is visible after the wait".
#ifndef SETPOINT_EMU_MBARRIER_H
#define SETPOINT_EMU_MBARRIER_H

#include <string>
#include <unordered_map>

namespace emu {

struct MBarrier {
    int expected = 0;         // arrivals per phase (the init count)
    int pending = 0;          // arrivals the current phase still lacks
    long long tx = 0;         // transaction bytes expected and not yet completed
    unsigned long long completed = 0;  // phases completed
    std::vector<int> waiters;          // threads blocked in try_wait on it
};

struct MBarriers {
    std::unordered_map<uintptr_t, MBarrier> bars;
};

inline MBarriers& mbarriers() {
    static MBarriers s;
    return s;
}

// The offset of p in the block's shared memory, as __cvta_generic_to_shared gives a shared
// address on a GPU. Swizzles act on these addresses, so the window must start on a 1024-byte
// boundary (the period of the 128-byte swizzle), and a descriptor's 14-bit field of
// address / 16 reaches 256 KB.
inline uint32_t shared_offset(const void* p, const char* what) {
    if (!in_shared(p)) fail("%s: %p is not in the block's shared memory", what, p);
    if ((uintptr_t)__start_emu_shared % 1024 != 0) {
        fail("%s: the emulated shared memory does not start on a 1024-byte boundary", what);
    }
    const uintptr_t off = (uintptr_t)((const unsigned char*)p - __start_emu_shared);
    if (off >= (1u << 18)) {
        fail("%s: shared offset %#zx is past the 256 KB that shared addresses reach", what,
             (size_t)off);
    }
    return (uint32_t)off;
}

// The shared memory at shared offset `off` (0 .. 2^18).
inline unsigned char* shared_at(uint32_t off) { return __start_emu_shared + off; }

inline MBarrier& mbarrier_of(const void* bar, const char* what) {
    shared_offset(bar, what);
    if ((uintptr_t)bar % 8 != 0) fail("%s: mbarrier %p is not 8-byte aligned", what, bar);
    auto it = mbarriers().bars.find((uintptr_t)bar);
    if (it == mbarriers().bars.end()) {
        fail("%s: the mbarrier at shared offset %#x was not initialised (mbarrier.init)", what,
             shared_offset(bar, what));
    }
    return it->second;
}

// Completes the current phase when it lacks neither arrivals nor bytes, and wakes its
// waiters; under every schedule but 0 they run next (see emu_mbarrier_arrive). Whether it
// woke any.
inline bool mbarrier_settle(MBarrier& b) {
    if (b.pending != 0 || b.tx != 0) return false;
    ++b.completed;
    b.pending = b.expected;
    const bool woke = !b.waiters.empty();
    for (const int t : b.waiters) {
        state().fibers[t].waiting = nullptr;
        if (state().policy.yield_on_release) state().urgent.push_back(t);
    }
    b.waiters.clear();
    return woke;
}

// One arrival. A thread whose arrival wakes waiters hands over to them at once (except
// under schedule 0): a producer waiting for a stage to be released then refills it before
// the releasing threads go on, the order that exposes a release made too early.
inline void mbarrier_arrive_once(const void* bar, const char* what) {
    MBarrier& b = mbarrier_of(bar, what);
    if (b.pending == 0) {
        fail("%s: more arrivals in one phase than the mbarrier's count %d (the phase still "
             "waits for %lld transaction bytes)",
             what, b.expected, b.tx);
    }
    --b.pending;
    if (mbarrier_settle(b) && state().policy.yield_on_release) switch_to_scheduler(nullptr);
}

// complete_tx::bytes of an async copy that has landed.
inline void mbarrier_complete_tx(const void* bar, long long bytes) {
    MBarrier& b = mbarrier_of(bar, "complete_tx");
    b.tx -= bytes;
    mbarrier_settle(b);
}

inline void mbarriers_begin_block() { mbarriers().bars.clear(); }

// The report of a block whose threads all wait and at least one waits on an mbarrier.
inline std::string mbarrier_deadlock_report() {
    Block& blk = state();
    for (const auto& [addr, b] : mbarriers().bars) {
        if (b.waiters.empty()) continue;
        const int t = b.waiters.front();
        threadIdx = blk.fibers[t].idx;
        char text[512];
        std::snprintf(text, sizeof text,
                      "deadlock: %zu thread(s) wait in mbarrier.try_wait.parity on the mbarrier "
                      "at shared offset %#x for the phase of parity %u, which can never "
                      "complete: it lacks %d of its %d arrivals and %lld transaction bytes, "
                      "and no thread can run to supply them (%d of %zu threads finished, the "
                      "rest wait elsewhere)",
                      b.waiters.size(), shared_offset((const void*)addr, "deadlock"),
                      (unsigned)(b.completed & 1), b.pending, b.expected, b.tx, blk.finished,
                      blk.fibers.size());
        return text;
    }
    return std::string();
}

}  // namespace emu

inline void emu_mbarrier_init(void* bar, unsigned count) {
    emu::shared_offset(bar, "mbarrier.init");
    if ((uintptr_t)bar % 8 != 0) emu::fail("mbarrier.init: %p is not 8-byte aligned", bar);
    if (count < 1 || count > (1u << 20) - 1) {
        emu::fail("mbarrier.init: count %u is outside [1, 2^20 - 1]", count);
    }
    emu::MBarrier& b = emu::mbarriers().bars[(uintptr_t)bar];
    if (!b.waiters.empty()) emu::fail("mbarrier.init while threads wait on the barrier");
    b = emu::MBarrier{};
    b.expected = b.pending = (int)count;
    std::memset(bar, 0, 8);  // the object itself is opaque; a read of it sees no poison
}

inline unsigned long long emu_mbarrier_arrive(void* bar) {
    const unsigned long long token = emu::mbarrier_of(bar, "mbarrier.arrive").completed;
    emu::mbarrier_arrive_once(bar, "mbarrier.arrive");
    return token;
}

inline void emu_mbarrier_arrive_expect_tx(void* bar, unsigned bytes) {
    emu::MBarrier& b = emu::mbarrier_of(bar, "mbarrier.arrive.expect_tx");
    if (bytes > (1u << 20) - 1) {
        emu::fail("mbarrier.arrive.expect_tx: %u bytes is past the 2^20 - 1 a phase counts", bytes);
    }
    b.tx += bytes;
    emu::mbarrier_arrive_once(bar, "mbarrier.arrive.expect_tx");
}

namespace emu {
// Lands the TMA copies still in flight to `bar` (tma.h).
inline void tma_land_for(const void* bar);
}  // namespace emu

inline bool emu_mbarrier_try_wait_parity(void* bar, unsigned parity) {
    emu::tma_land_for(bar);
    emu::MBarrier& b = emu::mbarrier_of(bar, "mbarrier.try_wait.parity");
    if ((b.completed & 1) != (parity & 1)) return true;
    b.waiters.push_back(emu::state().current);
    emu::switch_to_scheduler("mbarrier.try_wait.parity");
    return (emu::mbarrier_of(bar, "mbarrier.try_wait.parity").completed & 1) != (parity & 1);
}

#endif
