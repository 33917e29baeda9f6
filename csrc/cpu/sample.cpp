// sample, CPU: next-token ids (B,) from logits (B, V), one parallel task per chunk of rows, no sort of the vocab.
//
// Per row:
//   1. one pass converts the row to fp32 (a per-task buffer), finds the max and its first index (greedy answer)
//      and any NaN; greedy rows stop here;
//   2. z = (x - max) / temperature <= 0, so p = exp(z) <= 1 with p(max) = 1 (a row holding +inf samples
//      uniformly among its +inf entries: z = 0 there, -inf elsewhere);
//   3. top-k: the k-th largest z by a size-k min-heap (k <= 1024) or nth_element on a copy; every z >= it stays
//      (ties at the k-th value stay, as in the Torch reference);
//   4. small candidate set (top-k active): sort the few candidates, cut at top-p by their cumulative mass,
//      cut at min-p (p >= min_p, since p(max) = 1), inverse-CDF draw;
//      large set (no top-k, or huge ties): top-p threshold from a histogram of the mass over the float bits of p
//      (2048 buckets of 1/16 octave), then an exact cut inside the one bucket that crosses top_p * sum, then
//      min-p, then an inverse-CDF walk in index order. Sums are in double.
// Random numbers: Philox-4x32-10 keyed by the seed, counter (offset lo, offset hi, row, 0): one uniform per row,
// so the ids depend only on (seed, offset, row) and never on the thread layout.
// Bad rows never raise (a GPU kernel could not either): the id is -1 for NaN logits, -2 for a row of all -inf,
// -3 for an out-of-range temperature / top_k / top_p / min_p; the Python wrapper turns them into errors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <queue>
#include <utility>
#include <vector>

#include "../checks.h"

namespace pygpt {
namespace {

constexpr int64_t kNanRow = -1, kAllNegInfRow = -2, kBadParamRow = -3;

// Philox-4x32-10 (Salmon et al., SC'11) of counter (c0..c3) under the 64-bit key `seed`; returns the first two
// output words as one uniform double in [0, 1).
double philox_uniform(uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t a = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t b = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(b >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(a >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = static_cast<uint32_t>(b);
    c2 = n2;
    c3 = static_cast<uint32_t>(a);
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const uint64_t bits = (static_cast<uint64_t>(c0) << 21) ^ (c1 >> 11);  // 53 random bits
  return static_cast<double>(bits & ((uint64_t{1} << 53) - 1)) * 0x1.0p-53;
}

inline uint32_t float_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

// The k-th largest of z[0..V) (1 <= k < V), counting duplicates.
float kth_largest(const float* z, int64_t V, int64_t k, std::vector<float>& scratch) {
  if (k <= 1024) {
    std::priority_queue<float, std::vector<float>, std::greater<float>> heap(z, z + k);  // min-heap of the top k
    float top = heap.top();
    for (int64_t i = k; i < V; ++i) {
      if (z[i] > top) {
        heap.pop();
        heap.push(z[i]);
        top = heap.top();
      }
    }
    return top;
  }
  scratch.assign(z, z + V);
  std::nth_element(scratch.begin(), scratch.begin() + (k - 1), scratch.end(), std::greater<float>());
  return scratch[k - 1];
}

struct RowParams {
  float temperature, top_p, min_p;
  int64_t top_k;
};

inline bool params_valid(const RowParams& r) {
  // Written so that NaN parameters fail.
  return r.temperature >= 0.f && r.top_k >= 0 && r.top_p > 0.f && r.top_p <= 1.f && r.min_p >= 0.f &&
         r.min_p < 1.f;
}

struct Workspace {
  std::vector<float> z, p, scratch;
  std::vector<std::pair<float, int64_t>> cand;
  std::vector<double> hist;
};

constexpr int kHistShift = 19;                         // p in [0, 1]: bits >> 19 < 2048 (8 exponent + 4 mantissa bits)
constexpr int kHistBuckets = (0x3F800000 >> kHistShift) + 1;
constexpr int64_t kSmallCandidates = 4096;             // sort the candidates when there are at most this many

// Sample among candidates (z, index) sorted by decreasing z: top-p, min-p, inverse CDF with uniform u.
int64_t sample_small(std::vector<std::pair<float, int64_t>>& cand, float top_p, float min_p, double u,
                     std::vector<float>& p) {
  const int64_t n = static_cast<int64_t>(cand.size());
  p.resize(n);
  double total = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    p[j] = std::exp(cand[j].first);
    total += p[j];
  }
  int64_t keep = n;
  if (top_p < 1.f) {
    // Keep the shortest prefix whose mass reaches top_p (a token stays while the mass before it is below top_p),
    // plus any token tied with the last one kept.
    const double target = static_cast<double>(top_p) * total;
    double cum = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      cum += p[j];
      if (cum >= target) {
        keep = j + 1;
        break;
      }
    }
    while (keep < n && cand[keep].first == cand[keep - 1].first) ++keep;
  }
  // min-p relative to the most likely token, whose p is exp(0) = 1; p is decreasing so the cut is a prefix.
  while (keep > 1 && !(p[keep - 1] >= min_p && p[keep - 1] > 0.f)) --keep;
  double kept = 0.0;
  for (int64_t j = 0; j < keep; ++j) kept += p[j];
  const double target = u * kept;
  double cum = 0.0;
  for (int64_t j = 0; j < keep; ++j) {
    cum += p[j];
    if (cum > target) return cand[j].second;
  }
  return cand[keep - 1].second;  // rounding: target landed on the total
}

// Sample over the whole row: p[i] = exp(z[i]) where z[i] >= z_floor (0 elsewhere).
int64_t sample_large(const float* z, int64_t V, float z_floor, float top_p, float min_p, double u, Workspace& ws) {
  ws.p.resize(V);
  float* p = ws.p.data();
  double total = 0.0;
  for (int64_t i = 0; i < V; ++i) {
    p[i] = z[i] >= z_floor ? std::exp(z[i]) : 0.f;
    total += p[i];
  }
  float threshold = 0.f;  // keep p >= threshold (and p > 0)
  if (top_p < 1.f) {
    const double target = static_cast<double>(top_p) * total;
    ws.hist.assign(kHistBuckets, 0.0);
    for (int64_t i = 0; i < V; ++i) ws.hist[float_bits(p[i]) >> kHistShift] += p[i];
    double above = 0.0;
    int bucket = -1;
    for (int b = kHistBuckets - 1; b >= 0; --b) {
      if (above + ws.hist[b] >= target) {
        bucket = b;
        break;
      }
      above += ws.hist[b];
    }
    if (bucket >= 0) {
      // The exact cut inside the crossing bucket: its values in decreasing order.
      ws.scratch.clear();
      for (int64_t i = 0; i < V; ++i) {
        if (static_cast<int>(float_bits(p[i]) >> kHistShift) == bucket) ws.scratch.push_back(p[i]);
      }
      std::sort(ws.scratch.begin(), ws.scratch.end(), std::greater<float>());
      threshold = ws.scratch.empty() ? 0.f : ws.scratch.back();
      double cum = above;
      for (const float v : ws.scratch) {
        cum += v;
        if (cum >= target) {
          threshold = v;
          break;
        }
      }
    }
  }
  threshold = std::max(threshold, min_p);
  double kept = 0.0;
  int64_t last = -1;
  for (int64_t i = 0; i < V; ++i) {
    if (p[i] >= threshold && p[i] > 0.f) {
      kept += p[i];
      last = i;
    }
  }
  const double target = u * kept;
  double cum = 0.0;
  for (int64_t i = 0; i < last; ++i) {
    if (p[i] >= threshold && p[i] > 0.f) {
      cum += p[i];
      if (cum > target) return i;
    }
  }
  return last;  // the max has p = 1 >= threshold, so last >= 0
}

template <typename scalar_t>
int64_t sample_row(const scalar_t* x, int64_t V, int64_t row, const RowParams& prm, uint64_t seed,
                   uint64_t offset, Workspace& ws) {
  if (!params_valid(prm)) return kBadParamRow;
  ws.z.resize(V);
  float* z = ws.z.data();
  float m = -std::numeric_limits<float>::infinity();
  int64_t argmax = 0;
  bool nan = false;
  for (int64_t i = 0; i < V; ++i) {
    const float v = static_cast<float>(x[i]);
    z[i] = v;
    if (v != v) {
      nan = true;
    } else if (v > m) {
      m = v;
      argmax = i;
    }
  }
  if (nan) return kNanRow;
  if (m == -std::numeric_limits<float>::infinity()) return kAllNegInfRow;
  if (prm.temperature == 0.f || prm.top_k == 1) return argmax;

  const float inf = std::numeric_limits<float>::infinity();
  if (m == inf) {
    for (int64_t i = 0; i < V; ++i) z[i] = z[i] == inf ? 0.f : -inf;
  } else {
    const float t = prm.temperature;
    for (int64_t i = 0; i < V; ++i) z[i] = (z[i] - m) / t;
  }
  const double u = philox_uniform(seed, static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                                  static_cast<uint32_t>(row), 0u);
  if (prm.top_k > 0 && prm.top_k < V) {
    const float zk = kth_largest(z, V, prm.top_k, ws.scratch);
    int64_t count = 0;
    for (int64_t i = 0; i < V; ++i) count += z[i] >= zk;
    if (count <= kSmallCandidates) {
      ws.cand.clear();
      for (int64_t i = 0; i < V; ++i) {
        if (z[i] >= zk) ws.cand.emplace_back(z[i], i);
      }
      std::sort(ws.cand.begin(), ws.cand.end(), [](const auto& a, const auto& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
      });
      return sample_small(ws.cand, prm.top_p, prm.min_p, u, ws.p);
    }
    return sample_large(z, V, zk, prm.top_p, prm.min_p, u, ws);
  }
  return sample_large(z, V, -inf, prm.top_p, prm.min_p, u, ws);
}

at::Tensor sample_cpu(const at::Tensor& logits, const at::Tensor& temperature, const at::Tensor& top_k,
                      const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& rng_state) {
  check_sample_args("sample", logits, temperature, top_k, top_p, min_p, rng_state);
  TORCH_CHECK(logits.device().is_cpu(), "pygpt.sample: logits must be a CPU tensor for the CPU kernel, got ",
              logits.device());
  const int64_t B = logits.size(0), V = logits.size(1);
  auto out = at::empty({B}, logits.options().dtype(at::kLong));
  if (B == 0) return out;
  const int64_t stride = logits.stride(0);
  const float* temp = temperature.data_ptr<float>();
  const int32_t* topk = top_k.data_ptr<int32_t>();
  const float* topp = top_p.data_ptr<float>();
  const float* minp = min_p.data_ptr<float>();
  const int64_t* state = rng_state.data_ptr<int64_t>();
  const uint64_t seed = static_cast<uint64_t>(state[0]), offset = static_cast<uint64_t>(state[1]);
  int64_t* ids = out.data_ptr<int64_t>();
  // One row is already tens of microseconds at large V; group small rows so a task is worth scheduling.
  const int64_t grain = std::max<int64_t>(1, 16384 / V);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "sample_cpu", [&] {
    const scalar_t* base = logits.data_ptr<scalar_t>();
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      Workspace ws;
      for (int64_t row = begin; row < end; ++row) {
        const RowParams prm{temp[row], topp[row], minp[row], topk[row]};
        ids[row] = sample_row(base + row * stride, V, row, prm, seed, offset, ws);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pygpt, CPU, m) { m.impl("sample", &sample_cpu); }

}  // namespace pygpt
