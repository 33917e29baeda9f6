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
}
