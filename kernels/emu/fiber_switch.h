// Switching between the fibers of kernels/emu/cuda_emu.h. On x86-64 a switch saves the
// callee-saved registers and the floating-point control words on the stack it leaves and
// restores them from the one it enters: swapcontext would also save and restore the signal
// mask, a system call per switch, which made it most of the emulation's run time. Elsewhere
// (or with -DEMU_UCONTEXT) the portable ucontext calls do the same job.
#ifndef SETPOINT_EMU_FIBER_SWITCH_H
#define SETPOINT_EMU_FIBER_SWITCH_H

#include <ucontext.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace emu {

#if defined(__x86_64__) && !defined(EMU_UCONTEXT)

struct Context {
    void* sp = nullptr;
};

// Saves the current context's stack pointer to *from_sp and resumes the one at to_sp.
__attribute__((naked, noinline)) static void switch_stacks(void** /*from_sp*/, void* /*to_sp*/) {
    asm volatile(
        "pushq %rbp\n\t"
        "pushq %rbx\n\t"
        "pushq %r12\n\t"
        "pushq %r13\n\t"
        "pushq %r14\n\t"
        "pushq %r15\n\t"
        "subq $8, %rsp\n\t"
        "stmxcsr (%rsp)\n\t"
        "fnstcw 4(%rsp)\n\t"
        "movq %rsp, (%rdi)\n\t"
        "movq %rsi, %rsp\n\t"
        "ldmxcsr (%rsp)\n\t"
        "fldcw 4(%rsp)\n\t"
        "addq $8, %rsp\n\t"
        "popq %r15\n\t"
        "popq %r14\n\t"
        "popq %r13\n\t"
        "popq %r12\n\t"
        "popq %rbx\n\t"
        "popq %rbp\n\t"
        "ret\n\t");
}

// A context that starts `entry` (which must never return) on the given stack: the frame
// switch_stacks pops, laid out so that `entry` starts with the stack alignment of a call.
// make_context and switch_context return false when the system refuses (ucontext only).
inline bool make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    void** sp = (void**)(((uintptr_t)stack + bytes) & ~(uintptr_t)15);
    *--sp = nullptr;          // where entry's return address would be
    *--sp = (void*)entry;     // popped by switch_stacks' ret
    for (int r = 0; r < 6; ++r) {
        *--sp = nullptr;      // rbp, rbx, r12-r15
    }
    uint32_t control[2];
    asm volatile("stmxcsr %0" : "=m"(control[0]));
    asm volatile("fnstcw %0" : "=m"(control[1]));
    --sp;
    std::memcpy(sp, control, sizeof control);
    c.sp = sp;
    return true;
}

inline bool switch_context(Context& from, Context& to) {
    switch_stacks(&from.sp, to.sp);
    return true;
}

#else

struct Context {
    ucontext_t uc;
};

inline bool make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
    if (getcontext(&c.uc) != 0) {
        return false;
    }
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;  // entry never returns
    makecontext(&c.uc, entry, 0);
    return true;
}

inline bool switch_context(Context& from, Context& to) { return swapcontext(&from.uc, &to.uc) == 0; }

#endif

}  // namespace emu

#endif
