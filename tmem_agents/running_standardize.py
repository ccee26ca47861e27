"""Standardizing (or whitening) features with running statistics that hold still within a PPO update."""

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
        self._register_spread(width)
        self.register_buffer("commits", torch.zeros((), dtype=torch.long))
        self.tracking = False
        self._count = 0
        self._pending_mean = self._pending_m2 = None

    def _register_spread(self, width: int) -> None:
        """The buffers of the spread: ``var`` ``(F,)``."""
        self.register_buffer("var", torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., F)`` -> standardized (or whitened) ``(..., F)``; accumulates its statistics while ``tracking``."""
        if self.tracking:
            self._accumulate(x.detach().reshape(-1, x.shape[-1]))
        return self._scale(x - self.mean).clamp(-self.clip, self.clip)

    def _scale(self, centered: torch.Tensor) -> torch.Tensor:
        """Centred ``(..., F)`` -> each number divided by its running standard deviation."""
        return centered * torch.rsqrt(self.var + self.eps)

    def _accumulate(self, rows: torch.Tensor) -> None:
        """Merge the mean and sum of squared deviations of ``rows (n, F)`` into the pending ones (Chan et al.)."""
        rows = rows.double()
        n = rows.shape[0]
        if n == 0:
            return
        batch_mean = rows.mean(0)
        centered = rows - batch_mean
        batch_m2 = self._products(centered, centered)
        if self._count == 0:
            self._pending_mean, self._pending_m2 = torch.zeros_like(batch_mean), torch.zeros_like(batch_m2)
        total = self._count + n
        delta = batch_mean - self._pending_mean
        self._pending_mean = self._pending_mean + delta * (n / total)
        self._pending_m2 = (
            self._pending_m2 + batch_m2 + self._products(delta[None], delta[None]) * (self._count * n / total)
        )
        self._count = total

    @staticmethod
    def _products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(n, F), (n, F)`` -> the sums over rows of ``a * b``, ``(F,)``: the second moments kept."""
        return (a * b).sum(0)

    @torch.no_grad()
    def commit(self) -> None:
        """Move the running statistics towards those accumulated since the last commit, then clear those.
        Nothing changes when nothing was accumulated."""
        if self._count == 0:
            return
        rate = 1.0 if int(self.commits) == 0 else self.momentum
        self.mean.lerp_(self._pending_mean.to(self.mean), rate)
        self._commit_spread(self._pending_m2 / self._count, rate)
        self.commits += 1
        self._count = 0
        self._pending_mean = self._pending_m2 = None

    def _commit_spread(self, spread: torch.Tensor, rate: float) -> None:
        """Move ``var`` towards the accumulated variances ``spread (F,)``."""
        self.var.lerp_(spread.to(self.var), rate)


class RunningWhiten(RunningStandardize):
    """``(..., F)`` -> ``clamp((x - mean) @ W, -clip, clip)``, with ``W = (C + s I)^(-1/2)`` from a running
    covariance ``C`` ``(F, F)``, the shrinkage ``s = shrink * trace(C) / F``: ZCA whitening.

    Standardizing number by number leaves correlated features correlated: a signal that moves the features along a
    direction of little variance (a remembered target, beside features that swing with the arm's every move) stays
    small beside the rest, and the heads on top learn to use it late. Whitening gives every direction of the
    features unit variance, but for directions whose variance lies far below the average: the shrinkage scales those
    by at most ``1 / sqrt(s)`` instead of lifting their noise to unit variance. ``W`` is symmetric, so the whitened
    features stay as close to the features as whitening allows. The statistics follow :class:`RunningStandardize`'s
    protocol (accumulated while ``tracking``, changed on :meth:`commit`); before the first commit ``W`` is the
    identity and ``mean`` ``0``.
    """

    def __init__(self, width: int, momentum: float = 0.1, shrink: float = 0.1, clip: float = 10.0) -> None:
        if not shrink > 0:
            raise ValueError(f"shrink must be > 0 (it keeps near-constant directions off unit scale), got {shrink!r}")
        super().__init__(width, momentum, clip=clip)
        self.shrink = shrink

    def _register_spread(self, width: int) -> None:
        """The buffers of the spread: the covariance ``cov`` and the whitening ``transform``, ``(F, F)``."""
        self.register_buffer("cov", torch.eye(width))
        self.register_buffer("transform", torch.eye(width))

    def _scale(self, centered: torch.Tensor) -> torch.Tensor:
        """Centred ``(..., F)`` -> whitened by ``transform``."""
        return centered @ self.transform

    @staticmethod
    def _products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(n, F), (n, F)`` -> ``a^T b`` ``(F, F)``: the whole covariance is kept."""
        return a.T @ b

    def _commit_spread(self, spread: torch.Tensor, rate: float) -> None:
        """Move ``cov`` towards the accumulated covariance ``spread (F, F)`` and recompute ``transform``."""
        self.cov.lerp_(spread.to(self.cov), rate)
        cov = self.cov.double()
        values, vectors = torch.linalg.eigh((cov + cov.T) / 2)
        values = values.clamp_min(0)
        values = values + self.shrink * values.mean().clamp_min(1e-12)
        self.transform.copy_((vectors * values.rsqrt()) @ vectors.T)


@contextmanager
def tracking_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, every :class:`RunningStandardize` (and :class:`RunningWhiten`) inside ``module``
    accumulates what it sees."""
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
