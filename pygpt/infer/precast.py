"""A twin of a model whose Linear layers hold their weights already cast to the autocast dtype.

Under ``torch.autocast`` every Linear casts its fp32 weight (and bias) to bf16 on every call, and the cast is
cached only while one autocast region stays open, which a decode step (one region per step, or a CUDA graph
replaying the step) never does. A decode step at batch 1 is bound by kernel launches, and those casts are about a
quarter of them (25 of the heavy model's ~110 a step). The twin shares every other parameter and buffer with the
source model (norms, embeddings: autocast runs those in fp32 anyway) and holds bf16 copies of the Linear
weights - the very values autocast would compute, so its logits under autocast equal the source's bit for bit.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class PrecastModel:
    """``self.model`` runs like ``source`` under autocast to ``dtype``, without casting its Linear weights.

    ``refresh()`` copies the source's current Linear weights in (the engine calls it at the start of every
    generation, so training the source between calls is seen). A weight tied to an embedding (the LM head) gets
    its own low-precision copy; the embedding itself stays shared.
    """

    def __init__(self, source: nn.Module, dtype: torch.dtype = torch.bfloat16):
        shared = {id(t): t for t in [*source.parameters(), *source.buffers()]}
        self.model = copy.deepcopy(source, memo=shared)  # new modules, the same parameters and buffers
        self._pairs: list[tuple[nn.Parameter, nn.Parameter]] = []
        for src, twin in zip(source.modules(), self.model.modules()):
            if isinstance(twin, nn.Linear):
                for name, param in list(twin.named_parameters(recurse=False)):
                    low = nn.Parameter(param.detach().to(dtype), requires_grad=False)
                    setattr(twin, name, low)  # only the twin's module: the source keeps its parameter
                    self._pairs.append((getattr(src, name), low))

    @torch.no_grad()
    def refresh(self) -> None:
        for src, low in self._pairs:
            low.copy_(src)
