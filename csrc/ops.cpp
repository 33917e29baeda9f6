// The schema of every pygpt op, in one place. Implementations register per dispatch key: C++ CPU kernels in
// csrc/cpu/, CUDA C++ kernels in csrc/cuda/, Triton kernels (the default on CUDA) and fake impls from Python in
// pygpt/ops/.
#include <torch/library.h>

TORCH_LIBRARY(pygpt, m) {
  // Rotate-half RoPE of x (B, T, H, D) at absolute positions (B, T) or (T,): angles pos * base^(-2i/D) in fp32.
  // inverse=True rotates by the negative angle (the backward of the forward rotation).
  m.def("rotary(Tensor x, Tensor positions, float base=10000.0, bool inverse=False) -> Tensor");
  // The CUDA C++ implementation of rotary, selectable against the Triton one (PYGPT_CUDA_BACKEND=cuda).
  m.def("rotary_cuda(Tensor x, Tensor positions, float base=10000.0, bool inverse=False) -> Tensor");

  // Causal (or full) softmax attention of q (B, T, H, D) over k, v (B, T, Hkv, D) with RoPE applied to q and k at
  // positions (B, T) or (T,) (None: no rotation). Returns out (B, T, H, D) and the log-sum-exp (B, H, T)
  // in float32 (float64 for float64 inputs).
  m.def("rope_attention(Tensor q, Tensor k, Tensor v, Tensor? positions, float scale, float base=10000.0, "
        "bool causal=True) -> (Tensor, Tensor)");
  // Its gradients with respect to the un-rotated q, k and v.
  m.def("rope_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? positions, Tensor out, "
        "Tensor lse, float scale, float base=10000.0, bool causal=True) -> (Tensor, Tensor, Tensor)");

  // Next-token ids (B,) int64 from logits (B, V) with per-row temperature (B,) fp32, top_k (B,) int32, top_p (B,)
  // fp32 and min_p (B,) fp32; temperature 0 or top_k 1 is greedy. rng_state is an int64 (2,) tensor [seed,
  // offset] on the logits' device, read (never written) by the kernel: the same state gives the same ids.
  m.def("sample(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, Tensor rng_state) "
        "-> Tensor");
  // The CUDA C++ implementation of sample, selectable against the Triton one (PYGPT_CUDA_BACKEND=cuda).
  m.def("sample_cuda(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, Tensor min_p, "
        "Tensor rng_state) -> Tensor");

  // KV cache, per layer: k_cache and v_cache (B, Hkv, C, D) ring buffers of C slots per sequence (position p lives
  // in slot p % C, keys stored after RoPE); lengths (B,) int32 counts the tokens ever appended (= the next
  // position) and starts (B,) int32 is the position of the oldest valid entry. Eviction is bookkeeping only.
  // kv_append writes k, v (B, Tn, Hkv, D) at positions lengths .. lengths + Tn - 1 and advances lengths/starts.
  m.def("kv_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor(c!) lengths, Tensor(d!) starts, Tensor k, "
        "Tensor v) -> ()");
  m.def("kv_append_cuda(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor(c!) lengths, Tensor(d!) starts, Tensor k, "
        "Tensor v) -> ()");
  // Drop the oldest counts[b] entries of sequence b; counts[b] < 0 frees the sequence (lengths = starts = 0).
  m.def("kv_evict(Tensor(a!) lengths, Tensor(b!) starts, Tensor counts) -> ()");
  m.def("kv_evict_cuda(Tensor(a!) lengths, Tensor(b!) starts, Tensor counts) -> ()");
  // Decode step: q (B, Tn, H, D), k, v (B, Tn, Hkv, D) of Tn new tokens at positions lengths .. lengths + Tn - 1:
  // rotate q and k (rope=True), attend each new token over the cache's window of the last C positions (and the
  // new tokens before it), then append k~, v to the cache and (advance=True) move the counters on by Tn. Layers
  // that share one pair of counters advance them in the last layer only. Returns (B, Tn, H, D).
  m.def("rope_decode_attention(Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, "
        "Tensor(c!) lengths, Tensor(d!) starts, float scale, float base=10000.0, bool rope=True, "
        "bool advance=True) -> Tensor");

  // A decode step's Linear with its neighbours fused in, for the few rows (M = B * T) of a decode step:
  // out (M, N) = residual + act(norm(x) @ weight^T + bias) for x (M, K) and weight (N, K) ((2N, K) for swiglu).
  // norm: 0 none, 1 layernorm (norm_weight, optional norm_bias), 2 rmsnorm (norm_weight); act: 0 none, 1 gelu
  // (erf), 2 swiglu (silu of the first N outputs times the last N). Norm and accumulation in float32 (float64
  // for float64 weights); the normalised row and the result are rounded to weight's dtype (as autocast does
  // around a matmul); the residual (M, N), weight's dtype or float32, is added in its own dtype.
  m.def("fused_linear(Tensor x, Tensor weight, Tensor? bias, Tensor? norm_weight, Tensor? norm_bias, int norm, "
        "float eps, int act, Tensor? residual) -> Tensor");
}
