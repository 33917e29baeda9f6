"""pygpt's ops: each one name with three faces - a Torch reference (the ground truth), a C++ CPU kernel and a
GPU kernel (Triton by default, CUDA C++ where written) - dispatched by the tensors' device.

Importing this package loads the compiled extension ``pygpt._C`` (registering ``torch.ops.pygpt.*``) when it
matches the running torch; otherwise every op runs its reference.
"""

from ._library import backend_for, extension, extension_status, set_backend, triton_available
from .attention import rope_attention, rope_attention_reference
from .kv_cache import DecodeAttention, kv_append, kv_evict, rope_decode_attention
from .linear import FusedLinear, fused_linear, fused_linear_reference
from .sampling import check_sample_errors, make_rng_state, sample, sample_reference, sampling_rows
from .rotary import rope_angles, rope_inv_freq, rotary, rotary_reference

__all__ = [
    "backend_for", "extension", "extension_status", "set_backend", "triton_available",
    "rotary", "rotary_reference", "rope_attention", "rope_attention_reference", "rope_angles", "rope_inv_freq",
    "sample", "sample_reference", "sampling_rows", "make_rng_state", "check_sample_errors", "kv_append", "kv_evict",
    "rope_decode_attention", "DecodeAttention", "fused_linear", "fused_linear_reference", "FusedLinear",
]
