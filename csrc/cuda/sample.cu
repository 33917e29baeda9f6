// sample, CUDA C++: next-token ids (B,) from logits (B, V), one block per row, no sort and no host sync. The
// alternative to the Triton kernel (kernels/sample.py), selected with PYGPT_CUDA_BACKEND=cuda; same algorithm:
//
//   pass 1      block max, its first index (the greedy answer) and NaN;
//   z = (x - max) / T <= 0 and p = exp(z) <= 1 (a row holding +inf: z = 0 on its +inf entries, -inf elsewhere);
//   thresholds  on key(z) = bits(|z|) (increasing as z decreases): top-k is the smallest key K with
//               #{key <= K} >= k, top-p the smallest K with mass{key <= K} >= top_p * mass{key <= K_k}; each is
//               found by kKeyPasses passes of a kPivots-way bisection over the 31-bit key range (per-thread
//               counters in registers for every pivot, one block reduction a pass: no atomics);
//   min-p       p >= min_p (relative to the max, whose p is 1);
//   draw        inverse CDF: each thread owns a contiguous segment and sums its kept mass, a block scan gives
//               the segments' offsets and the total, and the thread whose segment holds u * total walks it.
// Fast path, tried first when the row is longer than the block (as the Triton kernel's): a histogram of z in
// bins of 1/4 (shared-memory atomics; z below -15.75 is not counted) and, without top-k, the row's mass give a
// bin edge above every token that can be kept (the bin of the k-th largest z; else the first bin whose mass
// lower bound reaches top_p of the mass, or the min-p cut); when at most kCap tokens lie above it, they are
// compacted into shared memory as (key << 32 | id), bitonic-sorted, and the top-k / top-p / min-p cuts and the
// draw are prefix searches over the sorted candidates and their prefix sums: three passes over the row in all.
// Uniforms: Philox-4x32-10 keyed by the seed with counter (offset lo, offset hi, row, 0), as the CPU kernel.
// Bad rows never trap: id -3 for an out-of-range parameter, else -1 for NaN logits, else -2 for all -inf.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <utility>

#include "../checks.h"

namespace pygpt {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kPivots = 16;
constexpr int kKeyPasses = 8;  // ceil(log_17(2^31)): (-1, 0x7F800000] shrinks by 17 a pass down to one key
constexpr int kKeyMax = 0x7F800000;  // key(-inf)
constexpr unsigned kFull = 0xffffffffu;
constexpr int kBins = 64;       // fast path: bin b holds -z in [b/4, (b+1)/4); bin 63 everything below
constexpr float kInvBinW = 4.f;
constexpr int kCap = 2 * kThreads;  // the most candidates the fast path sorts (two per thread in the scan)

__device__ __forceinline__ float uniform24(uint32_t r) { return static_cast<float>(r >> 8) * (1.0f / 16777216.0f); }

// Philox-4x32-10 (Salmon et al., SC'11) of counter (c0..c3) under the 64-bit key `seed`: the first output word.
__device__ uint32_t philox_first(uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi_a = __umulhi(0xD2511F53u, c0), lo_a = 0xD2511F53u * c0;
    const uint32_t hi_b = __umulhi(0xCD9E8D57u, c2), lo_b = 0xCD9E8D57u * c2;
    c0 = hi_b ^ c1 ^ k0;
    c1 = lo_b;
    c2 = hi_a ^ c3 ^ k1;
    c3 = lo_a;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Sum v[0..N) over the block; every thread gets the totals. Must be reached by all threads.
template <typename T, int N>
__device__ void block_sum(T (&v)[N]) {
  __shared__ T part[kWarps][N];
  __shared__ T total[N];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int j = 0; j < N; ++j) v[j] = warp_sum(v[j]);
  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < N; ++j) part[warp][j] = v[j];
  }
  __syncthreads();
  if (threadIdx.x < N) {
    T s = T(0);
    for (int w = 0; w < kWarps; ++w) s += part[w][threadIdx.x];
    total[threadIdx.x] = s;
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < N; ++j) v[j] = total[j];
  __syncthreads();  // `total` and `part` may be rewritten by the next call
}

// Block max of (value, index), ties to the lowest index; every thread gets the result.
__device__ void block_argmax(float& m, int& idx) {
  __shared__ float sm[kWarps];
  __shared__ int si[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float om = __shfl_xor_sync(kFull, m, o);
    const int oi = __shfl_xor_sync(kFull, idx, o);
    if (om > m || (om == m && oi < idx)) {
      m = om;
      idx = oi;
    }
  }
  if (lane == 0) {
    sm[warp] = m;
    si[warp] = idx;
  }
  __syncthreads();
  m = sm[0];
  idx = si[0];
  for (int w = 1; w < kWarps; ++w) {
    if (sm[w] > m || (sm[w] == m && si[w] < idx)) {
      m = sm[w];
      idx = si[w];
    }
  }
  __syncthreads();
}

template <typename T, bool kMin>
__device__ T block_extreme(T v) {
  __shared__ T s[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const T other = __shfl_xor_sync(kFull, v, o);
    v = (kMin ? other < v : other > v) ? other : v;
  }
  if (lane == 0) s[warp] = v;
  __syncthreads();
  v = s[0];
  for (int w = 1; w < kWarps; ++w) v = (kMin ? s[w] < v : s[w] > v) ? s[w] : v;
  __syncthreads();
  return v;
}

// Inclusive block scan of v; also returns the exclusive prefix (the previous thread's inclusive value, so the
// segments' intervals [excl, incl) tile [0, total) exactly) and the total.
__device__ float block_scan(float v, float& excl, float& total) {
  __shared__ float warp_tot[kWarps];
  __shared__ float incl_all[kThreads];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float n = __shfl_up_sync(kFull, v, o);
    if (lane >= o) v += n;
  }
  if (lane == 31) warp_tot[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float w = lane < kWarps ? warp_tot[lane] : 0.f;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float n = __shfl_up_sync(kFull, w, o);
      if (lane >= o) w += n;
    }
    if (lane < kWarps) warp_tot[lane] = w;
  }
  __syncthreads();
  const float incl = v + (warp > 0 ? warp_tot[warp - 1] : 0.f);
  incl_all[threadIdx.x] = incl;
  __syncthreads();
  excl = threadIdx.x > 0 ? incl_all[threadIdx.x - 1] : 0.f;
  total = incl_all[kThreads - 1];
  __syncthreads();
  return incl;
}

struct RowZ {
  float m, t;
  bool inf_row;
  __device__ __forceinline__ float z(float x) const {
    if (inf_row) return x == INFINITY ? 0.f : -INFINITY;
    return (x - m) / t;
  }
};

__device__ __forceinline__ int key_of(float z) { return static_cast<int>(__float_as_uint(z) & 0x7FFFFFFFu); }

__device__ __forceinline__ void pivots(int64_t lo, int64_t hi, int (&piv)[kPivots]) {
#pragma unroll
  for (int j = 0; j < kPivots; ++j) piv[j] = static_cast<int>(lo + ((j + 1) * (hi - lo)) / (kPivots + 1));
}

// One bisection step: the pivots whose statistic (count or mass of keys <= pivot) reaches the target bound the
// threshold key from above, the others from below.
template <typename T>
__device__ __forceinline__ void narrow(int64_t& lo, int64_t& hi, const int (&piv)[kPivots], const T* stat, T target) {
  int64_t new_lo = lo, new_hi = hi;
#pragma unroll
  for (int j = 0; j < kPivots; ++j) {
    if (stat[j] >= target) {
      new_hi = piv[j] < new_hi ? piv[j] : new_hi;
    } else {
      new_lo = piv[j] > new_lo ? piv[j] : new_lo;
    }
  }
  lo = new_lo;
  hi = new_hi;
}

__device__ __forceinline__ int bin_of(float z) {  // z <= 0 (or -inf)
  const float f = -z * kInvBinW;
  return f < static_cast<float>(kBins - 1) ? static_cast<int>(f) : kBins - 1;
}

// Number of sorted[0..n) with (sorted[q] >> 32) <= key (sorted ascending).
__device__ __forceinline__ int keys_at_most(const unsigned long long* sorted, int n, unsigned key) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (static_cast<unsigned>(sorted[mid] >> 32) <= key) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// First q in [0, n) with cum[q] >= target (strict: > target), n if none; cum is non-decreasing.
__device__ __forceinline__ int first_reaching(const float* cum, int n, float target, bool strict) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (strict ? cum[mid] > target : cum[mid] >= target) hi = mid; else lo = mid + 1;
  }
  return lo;
}

// The fast path (block-uniform): the sampled id, or -1 when the candidate set is too large (or the cut falls
// below the histogram) and the caller must run the general path.
template <typename scalar_t>
__device__ int fast_draw(const scalar_t* __restrict__ x, int V, const RowZ& rz, int k, float top_p, float min_p,
                         float u) {
  __shared__ int hist[kBins];
  __shared__ int n_cand;
  __shared__ unsigned long long cand[kCap];
  __shared__ float prob[kCap];
  __shared__ float cum[kCap];
  const int tid = threadIdx.x, lane = tid & 31;
  const bool need_k = k > 0 && k < V;
  const bool need_total = !need_k && top_p < 1.f;
  for (int b = tid; b < kBins; b += kThreads) hist[b] = 0;
  if (tid == 0) n_cand = 0;
  __syncthreads();
  float total[1] = {0.f};
  for (int i = tid; i < V; i += kThreads) {
    const float z = rz.z(static_cast<float>(x[i]));
    const int b = bin_of(z);
    if (b < kBins - 1) atomicAdd(&hist[b], 1);
    if (need_total) total[0] += expf(z);
  }
  block_sum(total);  // its barriers also publish hist
  // Every thread walks the 63 bins the same way, so the choice is block-uniform.
  int b_k = kBins, b_p = kBins, counted = 0;
  float lower = 0.f;  // a lower bound of the mass of bins 0..b (each token of bin b has p > exp(-(b+1)/4))
  for (int b = 0; b < kBins - 1; ++b) {
    counted += hist[b];
    lower += static_cast<float>(hist[b]) * expf(-static_cast<float>(b + 1) / kInvBinW);
    if (b_k == kBins && counted >= k) b_k = b;
    if (b_p == kBins && lower >= top_p * total[0] * 1.0001f) b_p = b;
  }
  if (!(top_p < 1.f)) b_p = kBins;
  int b_m = kBins;
  if (min_p > 0.f) {
    // Bins up to floor(f) hold every p >= min_p; one more for logf / expf rounding at the edge (the draw's
    // prob >= min_p test keeps the cut exact), as the Triton kernel's _cut_bin does.
    const float f = -logf(min_p) * kInvBinW + 1.f;
    b_m = f < static_cast<float>(kBins) ? static_cast<int>(f) : kBins;
  }
  const int b_sel = need_k ? b_k : (b_p < b_m ? b_p : b_m);
  if (b_sel >= kBins - 1) return -1;
  int count = 0;
  for (int b = 0; b <= b_sel; ++b) count += hist[b];
  if (count > kCap) return -1;

  // Pass 3: compact the candidates (warp-aggregated slots), pad, sort ascending by (key, id).
  for (int base_i = 0; base_i < V; base_i += kThreads) {
    const int i = base_i + tid;
    bool is_cand = false;
    unsigned long long packed = 0;
    if (i < V) {
      const float z = rz.z(static_cast<float>(x[i]));
      is_cand = bin_of(z) <= b_sel;
      packed = (static_cast<unsigned long long>(key_of(z)) << 32) | static_cast<unsigned>(i);
    }
    const unsigned ballot = __ballot_sync(kFull, is_cand);
    int slot = 0;
    if (lane == 0 && ballot) slot = atomicAdd(&n_cand, __popc(ballot));
    slot = __shfl_sync(kFull, slot, 0) + __popc(ballot & ((1u << lane) - 1u));
    if (is_cand && slot < kCap) cand[slot] = packed;
  }
  __syncthreads();
  for (int q = count + tid; q < kCap; q += kThreads) cand[q] = ~0ull;
  __syncthreads();
  for (int size = 2; size <= kCap; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = tid; t < kCap / 2; t += kThreads) {
        const int a = 2 * t - (t & (stride - 1)), b = a + stride;
        const unsigned long long va = cand[a], vb = cand[b];
        if ((va > vb) == ((a & size) == 0)) {
          cand[a] = vb;
          cand[b] = va;
        }
      }
      __syncthreads();
    }
  }
  // p in sorted order (non-increasing) and its inclusive prefix sums, two positions a thread.
  float pair[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int q = 2 * tid + h;
    pair[h] = q < count ? expf(-__uint_as_float(static_cast<unsigned>(cand[q] >> 32))) : 0.f;  // key = bits |z|
    prob[q] = pair[h];
  }
  float excl, sum_all;
  block_scan(pair[0] + pair[1], excl, sum_all);
  cum[2 * tid] = excl + pair[0];
  cum[2 * tid + 1] = excl + pair[0] + pair[1];
  __syncthreads();

  // Every cut keeps a prefix of the sorted candidates.
  int n = count;
  if (need_k) n = keys_at_most(cand, count, static_cast<unsigned>(cand[k - 1] >> 32));  // ties with the k-th stay
  if (top_p < 1.f) {
    const float target = top_p * (need_k ? cum[n - 1] : total[0]);
    const int cut = first_reaching(cum, n, target, false);
    // Not reached: without top-k the nucleus covers all candidates (a prefix of the row by value).
    if (cut < n) n = keys_at_most(cand, n, static_cast<unsigned>(cand[cut] >> 32));
  }
  {  // min-p (p relative to the max, whose p is 1) and p > 0: the first failing position ends the prefix
    int lo = 1, hi = n;  // prob[0] = 1 always passes
    while (lo < hi) {
      const int mid = (lo + hi) / 2;
      if (prob[mid] >= min_p && prob[mid] > 0.f) lo = mid + 1; else hi = mid;
    }
    n = lo;
  }
  int q = first_reaching(cum, n, u * cum[n - 1], true);
  if (q >= n) q = n - 1;  // rounding: the target landed on the total
  return static_cast<int>(cand[q] & 0xffffffffull);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, 1)
    sample_kernel(const scalar_t* __restrict__ logits, int64_t stride, int V, const float* __restrict__ temp,
                  const int32_t* __restrict__ topk, const float* __restrict__ topp,
                  const float* __restrict__ minp, const int64_t* __restrict__ rng, int64_t* __restrict__ out) {
  const int64_t row = blockIdx.x;
  const scalar_t* x = logits + row * stride;
  const int tid = threadIdx.x;
  const float t = temp[row], top_p = topp[row], min_p = minp[row];
  const int k = topk[row];
  // Written so that NaN parameters fail. Block-uniform, so the early returns keep every barrier reachable.
  if (!(t >= 0.f && k >= 0 && top_p > 0.f && top_p <= 1.f && min_p >= 0.f && min_p < 1.f)) {
    if (tid == 0) out[row] = -3;
    return;
  }

  float m = -INFINITY;
  int argmax = std::numeric_limits<int>::max();
  int nan = 0;
  for (int i = tid; i < V; i += kThreads) {
    const float v = static_cast<float>(x[i]);
    if (v != v) {
      nan = 1;
    } else if (v > m) {  // i increases, so this keeps the thread's first max
      m = v;
      argmax = i;
    }
  }
  nan = __syncthreads_or(nan);
  block_argmax(m, argmax);
  if (nan || m == -INFINITY || t == 0.f || k == 1) {
    if (tid == 0) out[row] = nan ? -1 : m == -INFINITY ? -2 : argmax;
    return;
  }
  const RowZ rz{m, t, m == INFINITY};
  const uint64_t seed = static_cast<uint64_t>(rng[0]), offset = static_cast<uint64_t>(rng[1]);
  const float u = uniform24(philox_first(seed, static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                                         static_cast<uint32_t>(row), 0u));
  if (V > kThreads) {
    const int id = fast_draw(x, V, rz, k, top_p, min_p, u);
    if (id >= 0) {
      if (tid == 0) out[row] = id;
      return;
    }
  }

  // top-k threshold.
  int key_k = kKeyMax;
  if (k > 0 && k < V) {
    int64_t lo = -1, hi = kKeyMax;
    for (int pass = 0; pass < kKeyPasses; ++pass) {
      int piv[kPivots];
      pivots(lo, hi, piv);
      int cnt[kPivots];
#pragma unroll
      for (int j = 0; j < kPivots; ++j) cnt[j] = 0;
      for (int i = tid; i < V; i += kThreads) {
        const int key = key_of(rz.z(static_cast<float>(x[i])));
#pragma unroll
        for (int j = 0; j < kPivots; ++j) cnt[j] += key <= piv[j];
      }
      block_sum(cnt);
      narrow(lo, hi, piv, cnt, k);
    }
    key_k = static_cast<int>(hi);
  }

  // top-p threshold (within the top-k set).
  int key_keep = key_k;
  if (top_p < 1.f) {
    int64_t lo = -1, hi = key_k;
    for (int pass = 0; pass < kKeyPasses; ++pass) {
      int piv[kPivots];
      pivots(lo, hi, piv);
      float mass[kPivots + 1];  // the last one is the mass of the whole top-k set
#pragma unroll
      for (int j = 0; j <= kPivots; ++j) mass[j] = 0.f;
      for (int i = tid; i < V; i += kThreads) {
        const float z = rz.z(static_cast<float>(x[i]));
        const int key = key_of(z);
        if (key <= key_k) {
          const float p = expf(z);
          mass[kPivots] += p;
#pragma unroll
          for (int j = 0; j < kPivots; ++j) mass[j] += key <= piv[j] ? p : 0.f;
        }
      }
      block_sum(mass);
      narrow(lo, hi, piv, mass, top_p * mass[kPivots]);
    }
    key_keep = static_cast<int>(hi);
  }

  // The draw: kept mass of this thread's contiguous segment, block scan, the owner of u * total walks.
  const int seg = (V + kThreads - 1) / kThreads;
  const int begin = min(V, tid * seg), end = min(V, begin + seg);
  float local = 0.f;
  int last_local = -1;
  for (int i = begin; i < end; ++i) {
    const float z = rz.z(static_cast<float>(x[i]));
    const float p = expf(z);
    if (key_of(z) <= key_keep && p >= min_p && p > 0.f) {
      local += p;
      last_local = i;
    }
  }
  float excl, total;
  const float incl = block_scan(local, excl, total);
  const float target = u * total;
  const int owner = block_extreme<int, true>(local > 0.f && incl > target ? tid : kThreads);
  const int last_kept = block_extreme<int, false>(last_local);
  if (owner == kThreads) {  // rounding put the target past every segment: the last kept token
    if (tid == 0) out[row] = last_kept;
    return;
  }
  if (tid == owner) {
    float cum = excl;
    int pick = last_local;
    for (int i = begin; i < end; ++i) {
      const float z = rz.z(static_cast<float>(x[i]));
      const float p = expf(z);
      if (key_of(z) <= key_keep && p >= min_p && p > 0.f) {
        cum += p;
        if (cum > target) {
          pick = i;
          break;
        }
      }
    }
    out[row] = pick;
  }
}

at::Tensor sample_cuda(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                       const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& rng_state) {
  check_sample_args("sample_cuda", logits, temperature, top_k, top_p, min_p, rng_state);
  TORCH_CHECK(logits.is_cuda(), "pygpt.sample_cuda: logits must be a CUDA tensor, got ", logits.device());
  TORCH_CHECK(logits.size(1) < std::numeric_limits<int>::max(), "pygpt.sample_cuda: vocabulary too large, ",
              logits.size(1));
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0);
  auto out = at::empty({B}, logits.options().dtype(at::kLong));
  if (B == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sample_cuda", [&] {
    sample_kernel<scalar_t><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), logits.stride(0), static_cast<int>(logits.size(1)),
        temperature.data_ptr<float>(), top_k.data_ptr<int32_t>(), top_p.data_ptr<float>(),
        min_p.data_ptr<float>(), rng_state.data_ptr<int64_t>(), out.data_ptr<int64_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pygpt, CUDA, m) { m.impl("sample_cuda", &sample_cuda); }

}  // namespace pygpt
