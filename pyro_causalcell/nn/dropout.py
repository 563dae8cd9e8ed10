"""Dropout whose mask takes a quarter of the random draws on the CPU."""

from __future__ import annotations

import torch
from torch import nn


class PackedDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask is cut from 64-bit random integers, four entries each.

    On the CPU, ``nn.Dropout`` draws one random number per entry (``bernoulli_``), which cost
    5-10% of an sVAE+ training step. Here each 64-bit draw gives four 16-bit uniform integers
    and an entry is kept where its integer is at least ``round(p * 2**16)`` above the smallest:
    about four times faster for a ``(256, 128)`` mask on 2 threads (48 against 197 us). The rate
    actually applied is ``round(p * 2**16) / 2**16`` (0.1 gives 0.100006). Kept entries are
    scaled by ``1 / (1 - p)`` as in ``nn.Dropout``. In evaluation mode, in place, on other
    devices, and for ``p`` of 0 or 1 it is ``nn.Dropout``.
    """

    LEVELS = 2 ** 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.inplace or x.device.type != "cpu" or not 0 < self.p < 1:
            return super().forward(x)
        n = x.numel()
        bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        uniform = bits.view(torch.int16)[:n].view(x.shape)  # each in [-2**15, 2**15)
        threshold = round(self.p * self.LEVELS) - self.LEVELS // 2
        return x * ((uniform >= threshold) * (1.0 / (1.0 - self.p))).to(x.dtype)
