// A CPU simulator of the CUDA execution model, just enough to run pygpt's CUDA C++ kernels (csrc/cuda/*.cu) in
// the tests on a machine without a GPU, in the spirit of numba's CUDA simulator. tests/cuda_sim/__init__.py
// translates each .cu file (launches `kernel<<<grid, block, smem, stream>>>(args)` become
// `Launch(grid, block, smem, stream).with(&kernel)(args)`; __shared__ declarations register their memory) and
// compiles it as C++ with this header included first.
//
// Blocks run one after another. The threads of a block are fibers of the calling OS thread, switched only where
// a thread waits: at __syncthreads and at the warp intrinsics (__shfl_*_sync, __ballot_sync), each a barrier
// over the whole block or warp. So __shared__ variables can be statics, and a kernel sees the same values a GPU
// would give it whenever its barriers are right. Stricter than a GPU on purpose:
//   - every thread of a block (warp) must reach the same barrier (the same kind, at the same line): a barrier
//     that some threads skip (a non-uniform early return) or meet at another line is a launch error, not a hang;
//   - warp intrinsics need a full mask and a full warp (blockDim.x a multiple of 32);
//   - shared memory is filled with 0xFF bytes (NaN for floats, -1 for ints) when a block starts, so a read of
//     what no thread of the block wrote shows;
//   - with CUDA_SIM_SCHEDULE_SEED set, blocks run in a drawn order, threads start in a drawn order, and a ready
//     thread of the warp with the highest drawn priority runs first (a PCT-style schedule): a missing barrier
//     shows as results that change with the seed.
// Errors of a launch (bad configuration, deadlock) are reported by C10_CUDA_KERNEL_LAUNCH_CHECK, as on a GPU.
// x86-64 only: fibers switch stacks in a few lines of assembly.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static  // (declarations the translation did not rewrite: no poisoning)
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

// CUDA's min / max are global functions of both operands' common type; for floating point they are fminf /
// fmaxf (a NaN operand yields the other one).
template <bool kMax, typename A, typename B>
inline std::common_type_t<A, B> cuda_sim_extreme(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) {
    return kMax ? std::fmax(static_cast<C>(a), static_cast<C>(b)) : std::fmin(static_cast<C>(a), static_cast<C>(b));
  } else {
    const C x = static_cast<C>(a), y = static_cast<C>(b);
    return (kMax ? x < y : y < x) ? y : x;
  }
}
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) { return cuda_sim_extreme<false>(a, b); }
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) { return cuda_sim_extreme<true>(a, b); }

namespace cuda_sim {

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 * 1024;

// Switch fibers: save the callee-saved registers and the FP control words on this stack, store its pointer in
// *save_sp, continue on load_sp (x86-64 System V; ~20x cheaper than swapcontext, which makes a system call).
extern "C" void cuda_sim_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .weak cuda_sim_switch
  .hidden cuda_sim_switch
  .type cuda_sim_switch, @function
cuda_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_sim_switch, .-cuda_sim_switch
)");

// A barrier: the threads expected, those arrived, and where the first of them waits (all must wait there).
struct Barrier {
  int expected = 0, arrived = 0;
  const char* file = nullptr;
  int line = 0;
  std::vector<int> waiting;
};

// The threads ready to run: first in, first out; under a schedule seed, the first ready thread of the warp with
// the highest drawn priority (a fast warp runs ahead until it waits, as one may on a GPU).
struct ReadyQueue {
  std::deque<int> fifo;
  std::vector<std::deque<int>> per_warp;  // under a seed
  std::vector<int> warp_order;            // warps by decreasing priority
  size_t size = 0;

  void prioritise(int warps, std::mt19937& rng) {
    per_warp.resize(warps);
    warp_order.resize(warps);
    std::iota(warp_order.begin(), warp_order.end(), 0);
    std::shuffle(warp_order.begin(), warp_order.end(), rng);
  }
  bool empty() const { return size == 0; }
  void push(int t) {
    ++size;
    if (per_warp.empty()) {
      fifo.push_back(t);
    } else {
      per_warp[t / 32].push_back(t);
    }
  }
  int pop() {
    --size;
    std::deque<int>* q = &fifo;
    for (int w : warp_order) {
      if (!per_warp[w].empty()) {
        q = &per_warp[w];
        break;
      }
    }
    const int t = q->front();
    q->pop_front();
    return t;
  }
};

struct Block {
  const std::function<void()>* body = nullptr;  // the kernel call, the same for every block
  int n = 0;
  int current = 0;
  std::vector<void*> sp;  // each waiting thread's saved stack pointer
  std::vector<char> done;
  ReadyQueue ready;
  Barrier block;
  std::vector<Barrier> warps;
  // Values exchanged by the intrinsics, per scope (0: warp, 1: block): two banks a thread, alternated per
  // exchange, so a thread released from one exchange cannot overwrite what a slower one has still to read (it
  // reuses a bank two exchanges later, after a barrier every reader has passed). Every thread of a scope makes
  // the same exchanges, so they agree on the bank.
  uint64_t slots[2][2][kMaxThreads];
  int bank[2][kMaxThreads];
  void* scheduler_sp = nullptr;
  std::mt19937 rng;
  bool shuffle = false;
  std::string error;
};

inline Block* g_block = nullptr;
inline std::string g_last_error;

inline void fail(const std::string& what) {
  if (g_last_error.empty()) g_last_error = what;
}

// The shared memory of every kernel run so far (registered by the translated __shared__ declarations).
inline std::vector<std::pair<void*, size_t>>& shared_regions() {
  static std::vector<std::pair<void*, size_t>> regions;
  return regions;
}

struct SharedRegion {
  SharedRegion(void* p, size_t bytes) {
    shared_regions().emplace_back(p, bytes);
    std::memset(p, 0xFF, bytes);  // (first reached in the middle of a block, before any thread wrote it)
  }
};

inline void poison_shared_memory() {
  for (auto [p, bytes] : shared_regions()) std::memset(p, 0xFF, bytes);
}

inline void set_thread_index(int t) {
  g_block->current = t;
  threadIdx = dim3(static_cast<unsigned>(t % blockDim.x), static_cast<unsigned>(t / blockDim.x % blockDim.y),
                   static_cast<unsigned>(t / (blockDim.x * blockDim.y)));
}

// Leave the current thread (its state saved in *save_sp, or nowhere when it has returned) for the next ready
// one, or for the scheduler when none is ready (every thread has returned, a deadlock, or an error).
inline void switch_away(void** save_sp) {
  Block& b = *g_block;
  static void* discard;
  void** save = save_sp != nullptr ? save_sp : &discard;
  if (!b.ready.empty() && b.error.empty()) {
    const int next = b.ready.pop();
    if (save_sp != nullptr && next == b.current) return;  // it released itself and runs on
    set_thread_index(next);
    cuda_sim_switch(save, b.sp[next]);
  } else {
    cuda_sim_switch(save, b.scheduler_sp);
  }
}

// Release the waiters of a completed barrier into the ready queue (in a drawn order under a schedule seed).
inline void release(Barrier& bar) {
  Block& b = *g_block;
  if (b.shuffle) std::shuffle(bar.waiting.begin(), bar.waiting.end(), b.rng);
  for (int t : bar.waiting) b.ready.push(t);
  bar.waiting.clear();
  bar.arrived = 0;
  bar.file = nullptr;
}

inline void wait_at(Barrier& bar, const char* what, const char* file, int line) {
  Block& b = *g_block;
  const int me = b.current;
  if (bar.arrived == 0) {
    bar.file = file;
    bar.line = line;
  } else if (bar.line != line || std::strcmp(bar.file, file) != 0) {
    b.error = std::string("threads wait at different barriers: ") + what + " at " + file + ":" +
              std::to_string(line) + " and another at " + bar.file + ":" + std::to_string(bar.line);
  }
  bar.waiting.push_back(me);
  if (++bar.arrived == bar.expected) release(bar);
  switch_away(&b.sp[me]);  // back here when released and scheduled
}

inline void block_barrier(const char* what, const char* file, int line) {
  wait_at(g_block->block, what, file, line);
}

inline void warp_barrier(unsigned mask, const char* what, const char* file, int line) {
  Block& b = *g_block;
  if (mask != 0xffffffffu || b.n % 32 != 0) {
    b.error = std::string(what) + " needs a full mask (0xffffffff) over a full warp of 32 threads";
  }
  wait_at(b.warps[b.current / 32], what, file, line);
}

// Every thread of the warp (block) publishes `mine`; after the barrier each reads what the others published.
inline const uint64_t* exchange(uint64_t mine, bool whole_block, unsigned mask, const char* what, const char* file,
                                int line) {
  Block& b = *g_block;
  const int t = b.current, scope = whole_block ? 1 : 0, bank = b.bank[scope][t];
  b.bank[scope][t] ^= 1;
  b.slots[scope][bank][t] = mine;
  if (whole_block) {
    block_barrier(what, file, line);
  } else {
    warp_barrier(mask, what, file, line);
  }
  return b.slots[scope][bank];
}

template <typename T>
inline uint64_t bits_of(T v) {
  static_assert(sizeof(T) <= 8, "a shuffled value has at most 8 bytes");
  uint64_t r = 0;
  std::memcpy(&r, &v, sizeof(T));
  return r;
}

template <typename T>
inline T from_bits(uint64_t r) {
  T v;
  std::memcpy(&v, &r, sizeof(T));
  return v;
}

// Every thread starts here (on its own stack) and never returns: it ends by switching away for good. Threads
// waiting at a barrier this one never reaches stay waiting; the scheduler reports that.
[[noreturn]] inline void thread_main() {
  Block& b = *g_block;
  (*b.body)();
  b.done[b.current] = 1;
  switch_away(nullptr);
  __builtin_unreachable();
}

// Thread t's stack, with an inaccessible page below it: an overflow faults instead of corrupting a neighbour.
inline char* stack_for(int t) {
  static std::vector<char*> stacks;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  while (static_cast<int>(stacks.size()) <= t) {
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    mprotect(p, page, PROT_NONE);
    stacks.push_back(static_cast<char*>(p) + page);
  }
  return stacks[t];
}

// A new thread's stack, as cuda_sim_switch leaves one: FP control words, six registers, then the return
// address thread_main (entered with the stack aligned as after a call).
inline void* fresh_stack(int t) {
  auto top = reinterpret_cast<uintptr_t>(stack_for(t) + kStackBytes) & ~uintptr_t{15};
  auto* words = reinterpret_cast<uint64_t*>(top);
  words[-1] = 0;  // thread_main's own (never used) return address
  words[-2] = reinterpret_cast<uint64_t>(&thread_main);
  for (int r = 3; r <= 8; ++r) words[-r] = 0;  // rbp rbx r12 r13 r14 r15
  uint32_t csr[2];
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(csr[0]), "=m"(csr[1]));  // the caller's MXCSR and x87 word
  std::memcpy(&words[-9], csr, 8);
  return &words[-9];
}

inline void run_block(Block& b) {
  std::vector<int> start(b.n);
  std::iota(start.begin(), start.end(), 0);
  if (b.shuffle) {
    std::shuffle(start.begin(), start.end(), b.rng);
    b.ready.prioritise((b.n + 31) / 32, b.rng);
  }
  for (int t : start) {
    b.sp[t] = fresh_stack(t);
    b.ready.push(t);
  }
  poison_shared_memory();
  b.current = -1;  // (the scheduler is no thread)
  switch_away(&b.scheduler_sp);  // back when no thread is ready
  if (b.error.empty()) {
    const int finished = static_cast<int>(std::count(b.done.begin(), b.done.end(), 1));
    if (finished < b.n) {
      b.error = "deadlock: " + std::to_string(b.n - finished) + " of " + std::to_string(b.n) +
                " threads wait at a barrier (__syncthreads or a warp intrinsic) that the other " +
                std::to_string(finished) + " returned without reaching";
    }
  }
}

template <typename G>
inline dim3 to_dim3(G g) {
  if constexpr (std::is_integral_v<G>) {
    if (g <= 0 || static_cast<int64_t>(g) > 2147483647) {
      fail("invalid launch configuration: " + std::to_string(static_cast<int64_t>(g)) + " in a grid or block");
      return dim3(0);
    }
    return dim3(static_cast<unsigned>(g));
  } else {
    return g;
  }
}

inline std::string describe(const dim3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

// One launch's configuration; with(&kernel)(args...) runs the grid (blocks in order, or in a drawn order
// under CUDA_SIM_SCHEDULE_SEED). One launch at a time in a process: the simulator's state is global.
struct Launch {
  dim3 grid, block;
  template <typename G, typename B, typename Stream = int>
  Launch(G g, B blk, size_t /*shared_bytes*/ = 0, Stream /*stream*/ = Stream{})
      : grid(to_dim3(g)), block(to_dim3(blk)) {}

  template <typename... Params>
  auto with(void (*kernel)(Params...)) const {
    return [launch = *this, kernel](auto&&... args) {
      launch.run([&] { kernel(static_cast<Params>(args)...); });
    };
  }

  bool valid() const {
    const uint64_t threads = uint64_t{block.x} * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || threads == 0 ||
        threads > kMaxThreads || block.x > 1024 || block.y > 1024 || block.z > 64) {
      fail("invalid launch configuration: grid " + describe(grid) + ", block " + describe(block) + " (" +
           std::to_string(threads) + " threads a block, at most 1024)");
      return false;
    }
    return true;
  }

  void run(const std::function<void()>& body) const {
    static std::mutex one_at_a_time;
    const std::lock_guard<std::mutex> lock(one_at_a_time);
    if (!valid()) return;
    const char* seed = std::getenv("CUDA_SIM_SCHEDULE_SEED");
    const bool shuffle = seed != nullptr && *seed != '\0';
    std::mt19937 order_rng(shuffle ? static_cast<unsigned>(std::strtoul(seed, nullptr, 10)) : 0u);
    std::vector<uint64_t> order(uint64_t{grid.x} * grid.y * grid.z);
    std::iota(order.begin(), order.end(), uint64_t{0});
    if (shuffle) std::shuffle(order.begin(), order.end(), order_rng);
    gridDim = grid;
    blockDim = block;
    for (uint64_t id : order) {
      auto b = std::make_unique<Block>();
      b->body = &body;
      b->n = static_cast<int>(block.x * block.y * block.z);
      b->sp.resize(b->n);
      b->done.assign(b->n, 0);
      b->block.expected = b->n;
      b->warps.resize((b->n + 31) / 32);
      for (size_t w = 0; w < b->warps.size(); ++w) b->warps[w].expected = std::min(32, b->n - 32 * int(w));
      std::fill(&b->bank[0][0], &b->bank[0][0] + 2 * kMaxThreads, 0);
      if (shuffle) {
        b->shuffle = true;
        b->rng.seed(static_cast<unsigned>(order_rng()));
      }
      blockIdx = dim3(static_cast<unsigned>(id % grid.x), static_cast<unsigned>(id / grid.x % grid.y),
                      static_cast<unsigned>(id / (uint64_t{grid.x} * grid.y)));
      g_block = b.get();
      run_block(*b);
      g_block = nullptr;
      if (!b->error.empty()) {
        fail("block " + describe(blockIdx) + ": " + b->error);
        return;
      }
    }
  }
};

// The launch's error, once (CUDA's cudaGetLastError clears it too).
inline std::string take_last_error() {
  std::string e;
  std::swap(e, g_last_error);
  return e;
}

// ---- device intrinsics (as macros, so that a barrier knows its line) -----------------------------------------
inline void syncthreads(const char* file, int line) { block_barrier("__syncthreads", file, line); }

inline int syncthreads_or(int pred, const char* file, int line) {
  const uint64_t* all = exchange(pred != 0, true, 0xffffffffu, "__syncthreads_or", file, line);
  int any = 0;
  for (int t = 0; t < g_block->n; ++t) any |= static_cast<int>(all[t]);
  return any;
}

inline int lane_base() { return g_block->current - g_block->current % 32; }

inline unsigned ballot(unsigned mask, int pred, const char* file, int line) {
  const int base = lane_base();
  const uint64_t* all = exchange(pred != 0, false, mask, "__ballot_sync", file, line);
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l) bits |= static_cast<unsigned>(all[base + l] != 0) << l;
  return bits;
}

// The value of lane src_lane(lane) of the warp (PTX uses the low 5 bits of a lane number or offset).
template <typename T, typename F>
inline T shuffle(unsigned mask, T v, F src_lane, const char* what, const char* file, int line) {
  const int base = lane_base(), lane = g_block->current - base;
  const uint64_t* all = exchange(bits_of(v), false, mask, what, file, line);
  const int src = src_lane(lane);
  return src >= 0 ? from_bits<T>(all[base + src]) : v;
}

}  // namespace cuda_sim

#define __syncthreads() ::cuda_sim::syncthreads(__FILE__, __LINE__)
#define __syncthreads_or(pred) ::cuda_sim::syncthreads_or((pred), __FILE__, __LINE__)
#define __ballot_sync(mask, pred) ::cuda_sim::ballot((mask), (pred), __FILE__, __LINE__)
#define __shfl_sync(mask, v, src)                                                                        \
  ::cuda_sim::shuffle((mask), (v), [&](int) { return static_cast<int>((src) & 31); }, "__shfl_sync", __FILE__, \
                      __LINE__)
#define __shfl_xor_sync(mask, v, lane_mask)                                                                  \
  ::cuda_sim::shuffle((mask), (v), [&](int l) { return (l ^ static_cast<int>(lane_mask)) & 31; },            \
                      "__shfl_xor_sync", __FILE__, __LINE__)
#define __shfl_up_sync(mask, v, delta)                                                                        \
  ::cuda_sim::shuffle((mask), (v), [&](int l) { return l - static_cast<int>((delta) & 31u); }, "__shfl_up_sync", \
                      __FILE__, __LINE__)

// Fibers switch only at barriers, so a plain read-modify-write is atomic here. CUDA's overloads only.
template <typename T>
inline T sim_atomic_add(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
inline int atomicAdd(int* a, int v) { return sim_atomic_add(a, v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return sim_atomic_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) { return sim_atomic_add(a, v); }
inline float atomicAdd(float* a, float v) { return sim_atomic_add(a, v); }
inline double atomicAdd(double* a, double v) { return sim_atomic_add(a, v); }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
inline unsigned __float_as_uint(float f) { return cuda_sim::from_bits<unsigned>(cuda_sim::bits_of(f)); }
inline float __uint_as_float(unsigned u) { return cuda_sim::from_bits<float>(cuda_sim::bits_of(u)); }
