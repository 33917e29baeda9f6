"""pygpt: a small, fast, from-scratch GPT toolkit whose hot paths are real kernels.

Importing the package is cheap: the compiled extension (`pygpt._C`) and the Triton kernels load lazily,
the first time an op needs them (see `pygpt.ops`).
"""

__version__ = "0.1.0"
