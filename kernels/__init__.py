"""pygpt's Triton kernels, one op per file, shipped inside the wheel as ``pygpt.kernels``.

Each file holds the ``@triton.jit`` kernel (its math in the docstring) and the host launcher that owns shapes,
block sizes and warps. They are imported lazily by ``pygpt.ops`` when a CUDA tensor needs them, so triton is
required only on a GPU (or on CPU through ``TRITON_INTERPRET=1``, as the tests do).
"""
