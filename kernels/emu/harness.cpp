// Runs one kernel of kernels/*.cu on the CPU through the emulation in cuda_emu.h.
//
//   harness KERNEL GRID < arguments
//
// stdin holds the kernel's arguments in its parameter order, whitespace-separated, each
// a type tag and its value:
//   i32 DEC                  an int
//   f32 HEX                  a float, as the 8 hex digits of its bits
//   f32[] LEN HEX...         a float* / const float* buffer (8 hex digits per element)
//   f64[] LEN HEX...         a double* buffer (16 hex digits per element)
//   u32[] LEN HEX...         an unsigned* buffer
//   u16[] LEN HEX...         an unsigned short* buffer (bf16 bits)
// The tags are checked against the kernel's signature. The kernel runs with GRID blocks of
// the block size kernels/ABI.md gives it. stdout then holds every buffer argument, in order,
// one per line, in the same form. Buffers are 256-byte aligned (like cudaMalloc) and
// surrounded by 256 bytes of NaN (or 0xdeadbeef) on each side: a kernel that reads there
// gets NaN into its results, and one that writes there is reported. Errors go to stderr
// with a non-zero exit status.
//
// Build: c++ -std=c++20 -O2 -pthread -fno-strict-aliasing -ffp-contract=off harness.cpp
// (-ffp-contract=off keeps a*b+c unfused, as in the Rust CPU backend.)
#include "cuda_emu.h"

#include <cinttypes>
#include <iostream>
#include <string>
#include <tuple>
#include <type_traits>

#include "../elementwise.cu"
#include "../gemm.cu"
#include "../softmax.cu"

namespace {

constexpr size_t kGuard = 256;

[[noreturn]] void die(const std::string& msg) {
    std::cerr << "harness: " << msg << "\n";
    std::exit(2);
}

struct Arg {
    std::string tag;
    uint64_t scalar = 0;  // the bits of an i32 or f32
    size_t len = 0, elem = 0;
    uint64_t guard = 0;  // the pattern around a buffer
    std::unique_ptr<unsigned char, decltype(&std::free)> mem{nullptr, &std::free};

    unsigned char* data() const { return mem.get() + kGuard; }
    uint64_t get(size_t i) const {
        uint64_t v = 0;
        std::memcpy(&v, data() + i * elem, elem);
        return v;
    }
    void set(unsigned char* p, uint64_t v) { std::memcpy(p, &v, elem); }
};

// The tag of a kernel parameter type.
template <class T>
constexpr const char* tag_of() {
    using E = std::remove_cv_t<std::remove_pointer_t<T>>;
    if constexpr (std::is_same_v<T, int>) return "i32";
    else if constexpr (std::is_same_v<T, float>) return "f32";
    else if constexpr (std::is_pointer_v<T> && std::is_same_v<E, float>) return "f32[]";
    else if constexpr (std::is_pointer_v<T> && std::is_same_v<E, double>) return "f64[]";
    else if constexpr (std::is_pointer_v<T> && std::is_same_v<E, unsigned>) return "u32[]";
    else if constexpr (std::is_pointer_v<T> && std::is_same_v<E, unsigned short>) return "u16[]";
    else static_assert(!sizeof(T), "kernel parameter type without a harness tag");
}

struct Args {
    std::vector<Arg> list;
    size_t next = 0;

    void read(std::istream& in) {
        std::string tag;
        while (in >> tag) {
            Arg a;
            a.tag = tag;
            if (tag == "i32") {
                long long v;
                if (!(in >> v) || v < INT32_MIN || v > INT32_MAX) die("bad i32 value");
                a.scalar = (uint64_t)(uint32_t)(int32_t)v;
            } else if (tag == "f32") {
                a.scalar = hex(in);
            } else {
                if (tag == "f32[]") a.elem = 4, a.guard = 0x7fc0dead;
                else if (tag == "f64[]") a.elem = 8, a.guard = 0x7ff8dead0000deadull;
                else if (tag == "u32[]") a.elem = 4, a.guard = 0xdeadbeef;
                else if (tag == "u16[]") a.elem = 2, a.guard = 0x7fde;
                else die("unknown argument tag `" + tag + "`");
                if (!(in >> a.len)) die("bad buffer length");
                const size_t bytes = (a.len * a.elem + 2 * kGuard + kGuard - 1) / kGuard * kGuard;
                a.mem.reset(static_cast<unsigned char*>(std::aligned_alloc(kGuard, bytes)));
                if (!a.mem) die("out of memory");
                for (unsigned char* p = a.mem.get(); p < a.mem.get() + bytes; p += a.elem) {
                    a.set(p, a.guard);
                }
                for (size_t i = 0; i < a.len; ++i) {
                    const uint64_t v = hex(in);
                    if (a.elem < 8 && v >> (8 * a.elem) != 0) die("value too wide for " + tag);
                    a.set(a.data() + i * a.elem, v);
                }
            }
            list.push_back(std::move(a));
        }
    }

    static uint64_t hex(std::istream& in) {
        std::string s;
        if (!(in >> s)) die("missing value");
        char* end = nullptr;
        uint64_t v = std::strtoull(s.c_str(), &end, 16);
        if (s.empty() || *end != '\0') die("bad hex value `" + s + "`");
        return v;
    }

    template <class T>
    T take() {
        if (next >= list.size()) die("too few arguments for the kernel");
        Arg& a = list[next++];
        if (a.tag != tag_of<T>()) {
            die("argument " + std::to_string(next) + ": the kernel takes " + tag_of<T>() +
                ", got " + a.tag);
        }
        if constexpr (std::is_pointer_v<T>) return reinterpret_cast<T>(a.data());
        else if constexpr (std::is_same_v<T, int>) return (int)(uint32_t)a.scalar;
        else return std::bit_cast<float>((uint32_t)a.scalar);
    }

    template <class... P>
    void invoke(void (*kernel)(P...), unsigned grid, unsigned block) {
        std::tuple<P...> values{take<P>()...};  // braced: taken left to right
        if (next != list.size()) die("too many arguments for the kernel");
        std::apply([&](P... v) { launch(kernel, dim3(grid), dim3(block), v...); }, values);
    }

    void check_guards() const {
        for (size_t i = 0; i < list.size(); ++i) {
            const Arg& a = list[i];
            if (a.elem == 0) continue;
            const size_t bytes = (a.len * a.elem + 2 * kGuard + kGuard - 1) / kGuard * kGuard;
            for (const unsigned char* p = a.mem.get(); p < a.mem.get() + bytes; p += a.elem) {
                if (p >= a.data() && p < a.data() + a.len * a.elem) continue;
                uint64_t v = 0;
                std::memcpy(&v, p, a.elem);
                if (v != a.guard) {
                    const long long at = (p - a.data()) / (long long)a.elem;
                    die("the kernel wrote outside argument " + std::to_string(i + 1) + " (" +
                        a.tag + " of " + std::to_string(a.len) + " elements), at element " +
                        std::to_string(at));
                }
            }
        }
    }

    void write(std::ostream& out) const {
        for (const Arg& a : list) {
            if (a.elem == 0) continue;
            out << a.tag << ' ' << a.len;
            char buf[20];
            for (size_t i = 0; i < a.len; ++i) {
                std::snprintf(buf, sizeof buf, " %" PRIx64, a.get(i));
                out << buf;
            }
            out << '\n';
        }
    }
};

struct Kernel {
    const char* name;
    unsigned block;  // kernels/ABI.md
    void (*run)(Args&, unsigned grid, unsigned block);
};

#define KERNEL(name, block) \
    Kernel { #name, block, [](Args& a, unsigned g, unsigned b) { a.invoke(name, g, b); } }

const Kernel kKernels[] = {
    KERNEL(fill_f32, 256),      KERNEL(gemm_f32, 256),     KERNEL(gemm_bf16, 128),
    KERNEL(gemm_bf16_simt, 256), KERNEL(bias_act, 256),     KERNEL(relu_grad, 256),
    KERNEL(col_sum, 256),       KERNEL(softmax_xent, 256), KERNEL(softmax_rows, 256),
    KERNEL(sum_partial, 256),   KERNEL(sgd_step, 256),     KERNEL(adam_step, 256),
    KERNEL(f32_to_bf16, 256),   KERNEL(bf16_to_f32, 256),
};

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) die("usage: harness KERNEL GRID < arguments");
    const std::string name = argv[1];
    char* end = nullptr;
    const unsigned long grid = std::strtoul(argv[2], &end, 10);
    if (*end != '\0' || grid == 0 || grid > 65535) die("bad grid size `" + std::string(argv[2]) + "`");
    const Kernel* kernel = nullptr;
    for (const Kernel& k : kKernels) {
        if (name == k.name) kernel = &k;
    }
    if (kernel == nullptr) die("no kernel named `" + name + "`");

    std::ios::sync_with_stdio(false);
    Args args;
    args.read(std::cin);
    kernel->run(args, (unsigned)grid, kernel->block);
    args.check_guards();
    args.write(std::cout);
    return std::cout.flush() ? 0 : 2;
}
