// Runs one kernel of kernels/*.cu on the CPU through the emulation in cuda_emu.h.
//
//   harness [--schedules S,S,...] KERNEL GRID < arguments
//
// stdin holds the kernel's arguments in its parameter order, whitespace-separated, each
// a type tag and its value:
//   i32 DEC                  an int
//   f32 HEX                  a float, as the 8 hex digits of its bits
//   f32[] LEN HEX...         a float* / const float* buffer (8 hex digits per element)
//   f64[] LEN HEX...         a double* buffer (16 hex digits per element)
//   u32[] LEN HEX...         an unsigned* buffer
//   u16[] LEN HEX...         an unsigned short* buffer (bf16 bits)
//   null                     a null pointer, for any pointer parameter (the GEMMs' optional
//                            bias and c_bf16)
//   tmap ARG D0 D1 STRIDE B0 B1 SWIZZLE
//                            a TensorMap (kernels/gemm_wgmma.cu) over the u16[] buffer that
//                            is argument ARG (1-based), as cuTensorMapEncodeTiled makes it:
//                            dims (D0, D1), dimension 0 contiguous, STRIDE bytes between
//                            consecutive indices of dimension 1, box (B0, B1), SWIZZLE 0 none,
//                            1 32B, 2 64B, 3 128B (kernels/emu/tma.h); in decimal
// The tags are checked against the kernel's signature. A buffer is 256-byte aligned (like
// cudaMalloc) unless its tag ends in @BYTES: `f32[]@4` places it 4 bytes past that alignment,
// as a sub-buffer of a larger allocation would be (BYTES a multiple of the element size, below
// 256). Each buffer is surrounded by at least 64 KiB, and at least its own size, of NaN (or
// 0xdeadbeef) on each side: a kernel that reads there gets NaN into its results, and one
// that writes there is reported.
//
// The kernel runs with GRID blocks of the block size kernels/ABI.md gives it, once per
// schedule of the emulation (cuda_emu.h; default 0), each time on fresh copies of the
// arguments. The results of every schedule must equal those of the first bit for bit; a
// difference is a race between the threads of a block and is reported. stdout then holds
// every buffer argument, in order, one per line, in the same form as its input. Errors go
// to stderr with a non-zero exit status.
//
// Build: c++ -std=c++20 -O1 -pthread -fno-strict-aliasing -ffp-contract=off
//        -fsanitize=alignment,bounds -fno-sanitize-recover=all -Wno-psabi harness.cpp
// (-ffp-contract=off keeps a*b+c unfused, as in the Rust CPU backend; the sanitizer turns a
// misaligned vector access or an index past a fixed-size array into an abort.)
#include "cuda_emu.h"

#include <algorithm>
#include <cinttypes>
#include <iostream>
#include <string>
#include <tuple>
#include <type_traits>

#include "../elementwise.cu"
#include "../gemm.cu"
#include "../gemm_large.cu"
#include "../gemm_small.cu"
#include "../gemm_wgmma.cu"
#include "../softmax.cu"
#include "async_copy_probe.h"
#include "hopper_probe.h"

namespace {

constexpr size_t kAlign = 256;
constexpr size_t kMinGuard = 64 * 1024;

[[noreturn]] void die(const std::string& msg) {
    std::cerr << "harness: " << msg << "\n";
    std::exit(2);
}

size_t round_up(size_t v, size_t to) { return (v + to - 1) / to * to; }

struct Arg {
    std::string tag;          // as given, with any @offset
    uint64_t scalar = 0;      // the bits of an i32 or f32
    size_t len = 0, elem = 0;
    size_t offset = 0;        // bytes past the 256-byte alignment
    size_t guard_bytes = 0;   // before the (aligned) start of the data
    uint64_t guard = 0;       // the pattern around a buffer
    std::vector<uint64_t> init;
    uint64_t map[7] = {};     // a tmap's ARG D0 D1 STRIDE B0 B1 SWIZZLE
    std::unique_ptr<unsigned char, decltype(&std::free)> mem{nullptr, &std::free};

    size_t total() const { return guard_bytes + round_up(offset + len * elem, kAlign) + guard_bytes; }
    unsigned char* data() const { return mem.get() + guard_bytes + offset; }
    uint64_t get(size_t i) const {
        uint64_t v = 0;
        std::memcpy(&v, data() + i * elem, elem);
        return v;
    }
    void set(unsigned char* p, uint64_t v) { std::memcpy(p, &v, elem); }

    // The guards and the input values, as before a launch.
    void reset() {
        for (unsigned char* p = mem.get(); p < mem.get() + total(); p += elem) set(p, guard);
        for (size_t i = 0; i < len; ++i) set(data() + i * elem, init[i]);
    }
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
    else if constexpr (std::is_same_v<T, TensorMap>) return "tmap";
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
            } else if (tag == "null") {
                // no value: a null pointer
            } else if (tag == "tmap") {
                for (uint64_t& v : a.map) {
                    if (!(in >> v)) die("bad tmap field: give ARG D0 D1 STRIDE B0 B1 SWIZZLE");
                }
            } else {
                read_buffer(in, a);
            }
            list.push_back(std::move(a));
        }
    }

    static void read_buffer(std::istream& in, Arg& a) {
        const size_t at = a.tag.find('@');
        const std::string base = a.tag.substr(0, at);
        if (base == "f32[]") a.elem = 4, a.guard = 0x7fc0dead;
        else if (base == "f64[]") a.elem = 8, a.guard = 0x7ff8dead0000deadull;
        else if (base == "u32[]") a.elem = 4, a.guard = 0xdeadbeef;
        else if (base == "u16[]") a.elem = 2, a.guard = 0x7fde;
        else die("unknown argument tag `" + a.tag + "`");
        if (at != std::string::npos) {
            const std::string off = a.tag.substr(at + 1);
            char* end = nullptr;
            const unsigned long v = std::strtoul(off.c_str(), &end, 10);
            if (off.empty() || *end != '\0' || v >= kAlign || v % a.elem != 0) {
                die("bad offset in `" + a.tag + "`: give bytes past the 256-byte alignment, a " +
                    "multiple of the element size (" + std::to_string(a.elem) + ") below 256");
            }
            a.offset = v;
        }
        if (!(in >> a.len)) die("bad buffer length");
        a.guard_bytes = std::max(kMinGuard, round_up(a.len * a.elem, kAlign));
        a.mem.reset(static_cast<unsigned char*>(std::aligned_alloc(kAlign, a.total())));
        if (!a.mem) die("out of memory");
        a.init.resize(a.len);
        for (size_t i = 0; i < a.len; ++i) {
            const uint64_t v = hex(in);
            if (a.elem < 8 && v >> (8 * a.elem) != 0) die("value too wide for " + a.tag);
            a.init[i] = v;
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
        if constexpr (std::is_pointer_v<T>) {
            if (a.tag == "null") return nullptr;
        }
        if (a.tag.substr(0, a.tag.find('@')) != tag_of<T>()) {
            die("argument " + std::to_string(next) + ": the kernel takes " + tag_of<T>() +
                ", got " + a.tag);
        }
        if constexpr (std::is_pointer_v<T>) return reinterpret_cast<T>(a.data());
        else if constexpr (std::is_same_v<T, TensorMap>) return tensor_map(a);
        else if constexpr (std::is_same_v<T, int>) return (int)(uint32_t)a.scalar;
        else return std::bit_cast<float>((uint32_t)a.scalar);
    }

    // The tensor map a tmap argument describes, encoded over its buffer as the driver would.
    TensorMap tensor_map(const Arg& a) const {
        const uint64_t ref = a.map[0];
        if (ref < 1 || ref > list.size() || list[ref - 1].tag.substr(0, 5) != "u16[]") {
            die("tmap: argument " + std::to_string(ref) + " is not a u16[] buffer");
        }
        const uint64_t dims[2] = {a.map[1], a.map[2]};
        const uint32_t box[2] = {(uint32_t)a.map[4], (uint32_t)a.map[5]};
        TensorMap m;
        const char* err = emu_tensor_map_encode_tiled(&m, list[ref - 1].data(), dims, a.map[3],
                                                      box, (uint32_t)a.map[6]);
        if (err != nullptr) die(std::string("cuTensorMapEncodeTiled refuses the tmap: ") + err);
        return m;
    }

    template <class... P>
    void invoke(void (*kernel)(P...), unsigned grid, unsigned block) {
        next = 0;
        for (Arg& a : list) {
            if (a.elem != 0) a.reset();
        }
        std::tuple<P...> values{take<P>()...};  // braced: taken left to right
        if (next != list.size()) die("too many arguments for the kernel");
        std::apply([&](P... v) { launch(kernel, dim3(grid), dim3(block), v...); }, values);
    }

    void check_guards() const {
        for (size_t i = 0; i < list.size(); ++i) {
            const Arg& a = list[i];
            if (a.elem == 0) continue;
            for (const unsigned char* p = a.mem.get(); p < a.mem.get() + a.total(); p += a.elem) {
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

    // Every buffer's values, in argument order.
    std::vector<std::vector<uint64_t>> results() const {
        std::vector<std::vector<uint64_t>> out;
        for (const Arg& a : list) {
            if (a.elem == 0) continue;
            std::vector<uint64_t> v(a.len);
            for (size_t i = 0; i < a.len; ++i) v[i] = a.get(i);
            out.push_back(std::move(v));
        }
        return out;
    }

    // Dies naming the first element where `got` (schedule `seed`) differs from `want`
    // (schedule `first`).
    void compare(const std::vector<std::vector<uint64_t>>& want,
                 const std::vector<std::vector<uint64_t>>& got, unsigned first,
                 unsigned seed) const {
        size_t buf = 0;
        for (size_t i = 0; i < list.size(); ++i) {
            const Arg& a = list[i];
            if (a.elem == 0) continue;
            for (size_t e = 0; e < a.len; ++e) {
                if (got[buf][e] == want[buf][e]) continue;
                char vals[80];
                std::snprintf(vals, sizeof vals, "%" PRIx64 " under schedule %u, %" PRIx64
                              " under schedule %u", got[buf][e], seed, want[buf][e], first);
                die("schedules " + std::to_string(first) + " (" + emu::describe_schedule(first) +
                    ") and " + std::to_string(seed) + " (" + emu::describe_schedule(seed) +
                    ") give different results: argument " + std::to_string(i + 1) + " (" +
                    a.tag + " of " + std::to_string(a.len) + " elements), element " +
                    std::to_string(e) + ": " + vals +
                    "; the threads of a block race (a barrier missing, or shared memory "
                    "overwritten while other threads still read it)");
            }
            ++buf;
        }
    }

    void write(const std::vector<std::vector<uint64_t>>& values, std::ostream& out) const {
        size_t buf = 0;
        for (const Arg& a : list) {
            if (a.elem == 0) continue;
            out << a.tag << ' ' << a.len;
            char text[20];
            for (const uint64_t v : values[buf]) {
                std::snprintf(text, sizeof text, " %" PRIx64, v);
                out << text;
            }
            out << '\n';
            ++buf;
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
    KERNEL(gemm_bf16_small_m, 128), KERNEL(gemm_bf16_128, 256),
    KERNEL(gemm_bf16_wgmma, 288),
    KERNEL(emu_cp_async_probe, 32),  // async_copy_probe.h: tests of the emulation only
    KERNEL(emu_mbarrier_probe, 64),  // hopper_probe.h: the same
    KERNEL(emu_tma_probe, 32),
    KERNEL(emu_wgmma_probe, 128),
};

// "0,1,7" -> {0, 1, 7}
std::vector<unsigned> parse_schedules(const std::string& text) {
    std::vector<unsigned> out;
    size_t at = 0;
    for (;;) {
        const size_t comma = text.find(',', at);
        const std::string item = text.substr(at, comma == std::string::npos ? comma : comma - at);
        char* end = nullptr;
        const unsigned long v = std::strtoul(item.c_str(), &end, 10);
        if (item.empty() || *end != '\0' || item[0] == '-' || v > 0xffffffffu) {
            die("bad schedule list `" + text + "`: give seeds separated by commas, e.g. 0,1,2");
        }
        out.push_back((unsigned)v);
        if (comma == std::string::npos) return out;
        at = comma + 1;
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> words(argv + 1, argv + argc);
    std::vector<unsigned> schedules{0};
    if (words.size() >= 2 && words[0] == "--schedules") {
        schedules = parse_schedules(words[1]);
        words.erase(words.begin(), words.begin() + 2);
    }
    if (words.size() != 2) die("usage: harness [--schedules S,S,...] KERNEL GRID < arguments");
    const std::string& name = words[0];
    char* end = nullptr;
    const unsigned long grid = std::strtoul(words[1].c_str(), &end, 10);
    if (*end != '\0' || grid == 0 || grid > 65535) die("bad grid size `" + words[1] + "`");
    const Kernel* kernel = nullptr;
    for (const Kernel& k : kKernels) {
        if (name == k.name) kernel = &k;
    }
    if (kernel == nullptr) die("no kernel named `" + name + "`");

    std::ios::sync_with_stdio(false);
    Args args;
    args.read(std::cin);
    std::vector<std::vector<uint64_t>> first;
    for (const unsigned seed : schedules) {
        emu::set_schedule(seed);
        kernel->run(args, (unsigned)grid, kernel->block);
        args.check_guards();
        if (first.empty()) {
            first = args.results();
        } else {
            args.compare(first, args.results(), schedules[0], seed);
        }
    }
    args.write(first, std::cout);
    return std::cout.flush() ? 0 : 2;
}
