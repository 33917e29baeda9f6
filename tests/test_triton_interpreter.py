"""The tests' patch of Triton's CPU interpreter (tests/triton_interpreter.py): float32 -> bfloat16 casts round to
nearest even and bfloat16 dots multiply values, as on a GPU - checked against torch's own bfloat16."""

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="runs Triton's CPU interpreter")


def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def cast(x_ptr, y_ptr, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs).to(tl.bfloat16))

    @triton.jit
    def dot(a_ptr, b_ptr, c_ptr, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr):
        m, k, n = tl.arange(0, M), tl.arange(0, K), tl.arange(0, N)
        a = tl.load(a_ptr + m[:, None] * K + k[None, :])
        b = tl.load(b_ptr + k[:, None] * N + n[None, :])
        tl.store(c_ptr + m[:, None] * N + n[None, :], tl.dot(a, b))

    return cast, dot


def test_float32_to_bfloat16_rounds_to_nearest_even(needs_triton):
    cast, _ = _kernels()
    one = 1.0 + 2.0 ** -7  # 1 + one bfloat16 ulp
    ties_and_more = [1.0 + 2.0 ** -8, one + 2.0 ** -8, 1.0 + 1.5 * 2.0 ** -8, -(1.0 + 2.0 ** -8) - 2.0 ** -20,
                     3.0e38, -1e-40, float("inf"), float("-inf")]
    x = torch.cat([torch.tensor(ties_and_more), torch.randn(248) * 10.0 ** torch.randint(-3, 4, (248,))])
    y = torch.empty(256, dtype=torch.bfloat16)
    cast[(1,)](x, y, N=256)
    assert torch.equal(y.view(torch.int16), x.to(torch.bfloat16).view(torch.int16))
    x[0] = float("nan")
    cast[(1,)](x, y, N=256)
    assert torch.isnan(y[0])


def test_bfloat16_dot_multiplies_values(needs_triton):
    _, dot = _kernels()
    a, b = torch.randn(16, 32).bfloat16(), torch.randn(32, 16).bfloat16()
    c = torch.empty(16, 16)
    dot[(1,)](a, b, c, M=16, K=32, N=16)
    torch.testing.assert_close(c, a.float() @ b.float(), rtol=1e-5, atol=1e-5)
