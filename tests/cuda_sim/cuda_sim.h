// A CPU simulator of the CUDA execution model, just enough to run pygpt's CUDA C++ kernels (csrc/cuda/*.cu) in
// the tests on a machine without a GPU, in the spirit of numba's CUDA simulator. tests/cuda_sim/__init__.py
// rewrites each launch `kernel<<<grid, block, smem, stream>>>(args)` as `Launch(grid, block, smem,
// stream).run(&kernel, args)` and compiles the file as C++ with this header included first.
//
// Blocks run one after another. The threads of a block are fibers of the calling OS thread, switched only where
// a thread waits: at __syncthreads and at the warp intrinsics (__shfl_*_sync, __ballot_sync), each a barrier
// over the whole block or warp. So __shared__ variables can be plain statics, and a kernel sees the same values
// a GPU would give it whenever its barriers are right. Stricter than a GPU on purpose:
//   - a barrier must be reached by every thread of its block / warp: one that some threads skip (a
//     non-uniform early return, a barrier under a divergent branch) is a launch error, not a hang;
//   - warp intrinsics need a full mask and a full warp (blockDim.x a multiple of 32);
//   - threads released from a barrier resume in an order drawn from CUDA_SIM_SCHEDULE_SEED (when set), so a
//     missing barrier shows as results that change with the seed.
// Errors of a launch (bad configuration, deadlock) are reported by C10_CUDA_KERNEL_LAUNCH_CHECK, as on a GPU.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

// CUDA's integer min / max are global functions of both operands' common type.
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }

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

struct Barrier {
  int expected = 0, arrived = 0;
  std::vector<int> waiting;
};

struct Block {
  std::function<void()> body;
  int n = 0;
  int current = 0;
  std::vector<void*> sp;  // each waiting thread's saved stack pointer
  std::vector<char> done;
  std::deque<int> ready;
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
    const int next = b.ready.front();
    b.ready.pop_front();
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
  for (int t : bar.waiting) b.ready.push_back(t);
  bar.waiting.clear();
  bar.arrived = 0;
}

inline void wait_at(Barrier& bar) {
  Block& b = *g_block;
  const int me = b.current;
  bar.waiting.push_back(me);
  if (++bar.arrived == bar.expected) release(bar);
  switch_away(&b.sp[me]);  // back here when released and scheduled
}

inline void block_barrier() { wait_at(g_block->block); }

inline void warp_barrier(unsigned mask) {
  Block& b = *g_block;
  if (mask != 0xffffffffu || b.n % 32 != 0) {
    b.error = "a warp intrinsic needs a full mask (0xffffffff) over a full warp of 32 threads";
  }
  wait_at(b.warps[b.current / 32]);
}

// Every thread of the warp (block) publishes `mine`; after the barrier each reads what the others published.
inline const uint64_t* exchange(uint64_t mine, bool whole_block, unsigned mask = 0xffffffffu) {
  Block& b = *g_block;
  const int t = b.current, scope = whole_block ? 1 : 0, bank = b.bank[scope][t];
  b.bank[scope][t] ^= 1;
  b.slots[scope][bank][t] = mine;
  if (whole_block) {
    block_barrier();
  } else {
    warp_barrier(mask);
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
  b.body();
  b.done[b.current] = 1;
  switch_away(nullptr);
  __builtin_unreachable();
}

inline char* stack_for(int t) {
  static std::vector<std::unique_ptr<char[]>> stacks;
  while (static_cast<int>(stacks.size()) <= t) stacks.emplace_back(new char[kStackBytes]);
  return stacks[t].get();
}

// A new thread's stack, as cuda_sim_switch leaves one: FP control words, six registers, then the return
// address thread_main (entered with the stack aligned as after a call).
inline void* fresh_stack(int t) {
  auto top = reinterpret_cast<uintptr_t>(stack_for(t) + kStackBytes) & ~uintptr_t{15};
  auto* words = reinterpret_cast<uint64_t*>(top);
  words[-1] = 0;  // thread_main's own (never used) return address
  words[-2] = reinterpret_cast<uint64_t>(&thread_main);
  for (int r = 3; r <= 8; ++r) words[-r] = 0;  // rbp rbx r12 r13 r14 r15
  uint32_t csr[2] = {0x1F80u, 0x037Fu};  // MXCSR and the x87 control word at their defaults
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(csr[0]), "=m"(csr[1]));  // ... or the caller's
  std::memcpy(&words[-9], csr, 8);
  return &words[-9];
}

inline void run_block(Block& b) {
  for (int t = 0; t < b.n; ++t) {
    b.sp[t] = fresh_stack(t);
    b.ready.push_back(t);
  }
  const int first = b.ready.front();
  b.ready.pop_front();
  set_thread_index(first);
  cuda_sim_switch(&b.scheduler_sp, b.sp[first]);  // back when no thread is ready
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

struct Launch {
  dim3 grid, block;
  template <typename G, typename B, typename Stream>
  Launch(G g, B blk, size_t /*shared_bytes*/ = 0, Stream /*stream*/ = {}) : grid(to_dim3(g)), block(to_dim3(blk)) {}

  template <typename... Params, typename... Args>
  void run(void (*kernel)(Params...), Args&&... args) {
    const uint64_t threads = uint64_t{block.x} * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0) return;  // (reported by to_dim3)
    if (threads > kMaxThreads) {
      fail("invalid launch configuration: " + std::to_string(threads) + " threads a block (at most 1024)");
      return;
    }
    std::function<void()> body = [&] { kernel(static_cast<Params>(args)...); };
    const char* seed = std::getenv("CUDA_SIM_SCHEDULE_SEED");
    gridDim = grid;
    blockDim = block;
    for (unsigned z = 0; z < grid.z; ++z) {
      for (unsigned y = 0; y < grid.y; ++y) {
        for (unsigned x = 0; x < grid.x; ++x) {
          auto b = std::make_unique<Block>();
          b->body = body;
          b->n = static_cast<int>(threads);
          b->sp.resize(b->n);
          b->done.assign(b->n, 0);
          b->block.expected = b->n;
          b->warps.resize((b->n + 31) / 32);
          for (size_t w = 0; w < b->warps.size(); ++w) b->warps[w].expected = std::min(32, b->n - 32 * int(w));
          std::fill(&b->bank[0][0], &b->bank[0][0] + 2 * kMaxThreads, 0);
          if (seed != nullptr && *seed != '\0') {
            b->shuffle = true;
            b->rng.seed(static_cast<unsigned>(std::strtoul(seed, nullptr, 10)) * 2654435761u + x + 7919u * y);
          }
          blockIdx = dim3(x, y, z);
          g_block = b.get();
          run_block(*b);
          g_block = nullptr;
          if (!b->error.empty()) {
            fail("block (" + std::to_string(x) + ", " + std::to_string(y) + ", " + std::to_string(z) + "): " +
                 b->error);
            return;
          }
        }
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

}  // namespace cuda_sim

// ---- device intrinsics --------------------------------------------------------------------------------------
inline void __syncthreads() { cuda_sim::block_barrier(); }

inline int __syncthreads_or(int pred) {
  const uint64_t* all = cuda_sim::exchange(pred != 0, true);
  int any = 0;
  for (int t = 0; t < cuda_sim::g_block->n; ++t) any |= static_cast<int>(all[t]);
  return any;
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
  const int lane = cuda_sim::g_block->current % 32, base = cuda_sim::g_block->current - lane;
  const uint64_t* all = cuda_sim::exchange(pred != 0, false, mask);
  unsigned bits = 0;
  for (int l = 0; l < 32; ++l) bits |= static_cast<unsigned>(all[base + l] != 0) << l;
  return bits;
}

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane) {
  const int lane = cuda_sim::g_block->current % 32, base = cuda_sim::g_block->current - lane;
  const uint64_t* all = cuda_sim::exchange(cuda_sim::bits_of(v), false, mask);
  return cuda_sim::from_bits<T>(all[base + (src_lane & 31)]);
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  const int lane = cuda_sim::g_block->current % 32, base = cuda_sim::g_block->current - lane;
  const uint64_t* all = cuda_sim::exchange(cuda_sim::bits_of(v), false, mask);
  return cuda_sim::from_bits<T>(all[base + ((lane ^ lane_mask) & 31)]);
}

template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta) {
  const int lane = cuda_sim::g_block->current % 32, base = cuda_sim::g_block->current - lane;
  const uint64_t* all = cuda_sim::exchange(cuda_sim::bits_of(v), false, mask);
  const int src = lane - static_cast<int>(delta);
  return src >= 0 ? cuda_sim::from_bits<T>(all[base + src]) : v;
}

// Fibers switch only at barriers, so a plain read-modify-write is atomic here.
template <typename T>
inline T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
inline unsigned __float_as_uint(float f) { return cuda_sim::from_bits<unsigned>(cuda_sim::bits_of(f)); }
inline float __uint_as_float(unsigned u) { return cuda_sim::from_bits<float>(cuda_sim::bits_of(u)); }
