// cp.async (global to shared copies that complete asynchronously), emulated on the threads
// of kernels/emu/cuda_emu.h (which includes this file), for the pipeline of gemm_bf16:
//
//   cp.async.cg.shared.global [dst], [src], 16, src_size;  ->  emu_cp_async_16(dst, src, n)
//   cp.async.commit_group;                                 ->  emu_cp_async_commit()
//   cp.async.wait_group N;                                 ->  emu_cp_async_wait(N)
//
// A copy writes 16 bytes at dst: the first src_size bytes from src, zeros for the rest.
// Each thread's copies go into its open group until it commits; wait_group N returns once at
// most N of the thread's committed groups are still pending, that is, it completes all but
// its N newest. On a GPU a copy lands at some moment between its issue and the wait that
// retires its group, so a kernel may read the destination only after that wait (and other
// threads only after a barrier that follows it). The emulation makes that moment depend on
// the schedule: under schedules 0 and 2 every copy lands only at the wait that retires it,
// under 1 and 3 at its issue, and under the random schedules each copy draws one of the
// two. A read before the wait then sees the shared memory's NaN poison, or an earlier
// slice, under some schedules and the copied data under others, and the harness reports the
// schedules' results differing (or the comparison with the CPU backend fails).
//
// What it checks: both addresses 16-byte aligned, src_size in [0, 16], the destination in
// the block's __shared__ memory and the source outside it (the emulation cannot tell a
// global address from other host memory, only from shared memory), wait counts from 0 to
// 7, and that no thread ends the block with copies that were never committed or never
// waited for. A copy lands either at issue or at its wait, never in between (at a barrier
// before the wait, say): a read between issue and wait sees the copy under one of the two
// and not under the other, which is what makes it show.
#ifndef SETPOINT_EMU_ASYNC_COPY_H
#define SETPOINT_EMU_ASYNC_COPY_H

namespace emu {

struct AsyncCopy {
    unsigned char* dst;
    const unsigned char* src;
    int src_size;
    bool landed;  // at issue: the group still has to be waited for
};

// One thread's copies: those issued since its last commit, and its committed groups,
// oldest first. Copies that landed at issue are kept too, so that a missing wait is
// reported under every schedule.
struct AsyncCopies {
    std::vector<AsyncCopy> open;
    std::vector<std::vector<AsyncCopy>> groups;
};

struct AsyncState {
    std::vector<AsyncCopies> threads;
    uint64_t issued = 0;  // copies issued in this block, to draw when each lands
};

inline AsyncState& async_state() {
    static AsyncState s;
    return s;
}

inline void perform(AsyncCopy& c) {
    if (c.landed) return;
    c.landed = true;
    std::memcpy(c.dst, c.src, (size_t)c.src_size);
    std::memset(c.dst + c.src_size, 0, 16 - (size_t)c.src_size);
}

// Whether the copy now being issued lands at once (else at the wait that retires it).
inline bool lands_at_issue() {
    const unsigned seed = schedule_seed();
    if (seed < 4) return seed == 1 || seed == 3;
    // splitmix64 of the schedule, the block and the copy's number: its own stream, so the
    // random thread orders stay those of the schedule.
    uint64_t z = ((uint64_t)seed << 40 ^ (uint64_t)blockIdx.x << 20) +
                 ++async_state().issued * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return ((z ^ (z >> 31)) & 1) != 0;
}

inline bool in_shared(const void* p) {
    const unsigned char* q = static_cast<const unsigned char*>(p);
    return __start_emu_shared != nullptr && q >= __start_emu_shared && q < __stop_emu_shared;
}

// Called by run_block (cuda_emu.h) at the start and at the end of each block.
inline void async_copies_begin_block(int threads) {
    AsyncState& s = async_state();
    s.threads.assign((size_t)threads, AsyncCopies{});
    s.issued = 0;
}

inline void async_copies_end_block() {
    AsyncState& s = async_state();
    for (size_t t = 0; t < s.threads.size(); ++t) {
        const AsyncCopies& c = s.threads[t];
        size_t pending = 0;  // copies in committed groups (empty groups need no wait)
        for (const std::vector<AsyncCopy>& g : c.groups) pending += g.size();
        if (pending == 0 && c.open.empty()) continue;
        threadIdx = state().fibers[t].idx;
        if (pending != 0) {
            fail("cp.async group never waited: the thread ended with %zu copies in committed "
                 "groups not retired by a cp.async.wait_group",
                 pending);
        }
        fail("cp.async copies never committed: %zu copies issued after the last "
             "cp.async.commit_group",
             c.open.size());
    }
}

inline AsyncCopies& my_copies() { return async_state().threads[(size_t)state().current]; }

}  // namespace emu

// cp.async.cg.shared.global [dst], [src], 16, src_size.
inline void emu_cp_async_16(void* dst, const void* src, int src_size) {
    if ((uintptr_t)dst % 16 != 0) {
        emu::fail("cp.async: shared destination %p is not 16-byte aligned", dst);
    }
    if ((uintptr_t)src % 16 != 0) {
        emu::fail("cp.async: global source %p is not 16-byte aligned", src);
    }
    if (src_size < 0 || src_size > 16) {
        emu::fail("cp.async: src-size %d is outside [0, 16]", src_size);
    }
    if (!emu::in_shared(dst)) {
        emu::fail("cp.async: destination %p is not in the block's shared memory", dst);
    }
    if (emu::in_shared(src)) {
        emu::fail("cp.async: source %p is in shared memory, not a global address", src);
    }
    emu::AsyncCopy c{static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src),
                     src_size, false};
    if (emu::lands_at_issue()) {
        emu::perform(c);
    }
    emu::my_copies().open.push_back(c);
}

// cp.async.commit_group: the copies issued since the last commit become one group (an
// empty group when there were none, as on the GPU).
inline void emu_cp_async_commit() {
    emu::AsyncCopies& mine = emu::my_copies();
    mine.groups.push_back(std::move(mine.open));
    mine.open.clear();
}

// cp.async.wait_group n: completes the thread's committed groups but the n newest. Copies
// issued since the last commit are not waited for.
inline void emu_cp_async_wait(int n) {
    if (n < 0 || n > 7) emu::fail("cp.async.wait_group %d: the count must be in [0, 7]", n);
    emu::AsyncCopies& mine = emu::my_copies();
    const size_t done = mine.groups.size() > (size_t)n ? mine.groups.size() - (size_t)n : 0;
    for (size_t g = 0; g < done; ++g) {
        for (emu::AsyncCopy& c : mine.groups[g]) {
            emu::perform(c);
        }
    }
    mine.groups.erase(mine.groups.begin(), mine.groups.begin() + (long)done);
}

#endif
