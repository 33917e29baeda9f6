"""Train/val split and the random-window batch sampler (no epochs, as nanoGPT does)."""

from __future__ import annotations

import torch


def split_train_val(ids: torch.Tensor, train_fraction: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``train_fraction`` of the ids train, the rest val (the split of ../shared/EVAL.md)."""
    n = int(train_fraction * len(ids))
    return ids[:n], ids[n:]


class BatchSampler:
    """Random windows of ``block_size + 1`` ids from a 1-D id tensor, drawn with its own seeded generator.

    ``get_batch()`` returns x, y of shape (B, T): y is x shifted by one. The generator's state is part of a
    checkpoint, so a resumed run draws the same batches as an uninterrupted one.
    """

    def __init__(self, ids: torch.Tensor, block_size: int, batch_size: int, seed: int = 1337,
                 device: torch.device | str = "cpu"):
        if ids.dim() != 1:
            raise ValueError(f"BatchSampler: ids must be 1-D, got shape {tuple(ids.shape)}")
        if len(ids) < block_size + 1:
            raise ValueError(f"BatchSampler: need at least block_size + 1 = {block_size + 1} ids, got {len(ids)}")
        self.ids = ids.long()
        self.block_size = block_size
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self._offsets = torch.arange(block_size + 1)

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.ids) - self.block_size, (self.batch_size,), generator=self.generator)
        windows = self.ids[starts[:, None] + self._offsets]  # (B, T + 1)
        x, y = windows[:, :-1], windows[:, 1:]
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.contiguous(), y.contiguous()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
