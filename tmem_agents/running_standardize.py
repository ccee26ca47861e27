"""Standardizing features number by number with running statistics that hold still within a PPO update."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class RunningStandardize(nn.Module):
    """``(..., F)`` -> ``clamp((x - mean) / sqrt(var + eps), -clip, clip)``, with ``mean`` and ``var`` ``(F,)``
    running statistics that change only on :meth:`commit`.

    A LayerNorm scales a read by its overall spread, so numbers that vary little across steps (a cell that
    holds one remembered coordinate among cells that swing with every frame) stay small beside the rest
    and a gradient-trained readout hardly learns them. Standardizing every number by its own spread over
    the data puts each at unit scale. The statistics are buffers, saved with the model. While ``tracking``
    is set (the algorithm sets it for its rollout's steps, :func:`tracking_statistics`), forwards accumulate
    the mean and variance of what they see; :meth:`commit` (after the update that trains on that rollout)
    moves the running statistics towards them by ``momentum`` (all the way at the first commit). The
    rollout and the update that trains on it thus see the same function, so their log-probabilities agree,
    as with SB3's ``VecNormalize``. Before the first commit the statistics are ``0`` and ``1``.
    """

    def __init__(self, width: int, momentum: float = 0.1, eps: float = 1e-5, clip: float = 10.0) -> None:
        super().__init__()
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.momentum, self.eps, self.clip = momentum, eps, clip
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("var", torch.ones(width))
        self.register_buffer("commits", torch.zeros((), dtype=torch.long))
        self.tracking = False
        self._count = 0
        self._pending_mean = self._pending_m2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., F)`` -> standardized ``(..., F)``; accumulates statistics of ``x`` while ``tracking``."""
        if self.tracking:
            self._accumulate(x.detach().reshape(-1, x.shape[-1]))
        return ((x - self.mean) * torch.rsqrt(self.var + self.eps)).clamp(-self.clip, self.clip)

    def _accumulate(self, rows: torch.Tensor) -> None:
        """Merge the mean and sum of squared deviations of ``rows (n, F)`` into the pending ones (Chan et al.)."""
        rows = rows.double()
        n = rows.shape[0]
        if n == 0:
            return
        if self._count == 0:
            self._pending_mean = self._pending_m2 = torch.zeros_like(rows[0])
        batch_mean = rows.mean(0)
        batch_m2 = ((rows - batch_mean) ** 2).sum(0)
        total = self._count + n
        delta = batch_mean - self._pending_mean
        self._pending_mean = self._pending_mean + delta * (n / total)
        self._pending_m2 = self._pending_m2 + batch_m2 + delta**2 * (self._count * n / total)
        self._count = total

    @torch.no_grad()
    def commit(self) -> None:
        """Move ``mean`` and ``var`` towards the statistics accumulated since the last commit, then clear those.
        Nothing changes when nothing was accumulated."""
        if self._count == 0:
            return
        rate = 1.0 if int(self.commits) == 0 else self.momentum
        mean = self._pending_mean.to(self.mean)
        var = (self._pending_m2 / self._count).to(self.var)
        self.mean.lerp_(mean, rate)
        self.var.lerp_(var, rate)
        self.commits += 1
        self._count = 0
        self._pending_mean = self._pending_m2 = None


@contextmanager
def tracking_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, every :class:`RunningStandardize` inside ``module`` accumulates what it sees."""
    layers = [layer for layer in module.modules() if isinstance(layer, RunningStandardize)]
    for layer in layers:
        layer.tracking = True
    try:
        yield
    finally:
        for layer in layers:
            layer.tracking = False


def commit_statistics(module: nn.Module) -> None:
    """:meth:`RunningStandardize.commit` every :class:`RunningStandardize` inside ``module``."""
    for layer in module.modules():
        if isinstance(layer, RunningStandardize):
            layer.commit()
