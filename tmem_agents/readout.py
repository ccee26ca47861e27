"""Linear readouts: how much of a quantity a model's features carry, as the held-out R^2 of a ridge regression."""

from __future__ import annotations

import torch


def ridge_r2(features: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3) -> float:
    """Held-out R^2 (mean over the target's columns) of a ridge readout of ``target`` ``(B, k)`` from ``features``
    ``(B, F)`` with penalty ``ridge``: fitted on the first half of the rows, scored on the second."""
    x = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    y = target.double()
    half = len(x) // 2
    penalty = ridge * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(x[:half].T @ x[:half] + penalty, x[:half].T @ y[:half])
    residual = y[half:] - x[half:] @ weights
    return (1 - residual.pow(2).sum(0) / (y[half:] - y[half:].mean(0)).pow(2).sum(0)).mean().item()


def variance_share(features: torch.Tensor, target: torch.Tensor) -> float:
    """Share of the variance of ``features`` ``(B, F)`` across the rows (summed over the features) that a
    least-squares linear function of ``target`` ``(B, k)`` explains.

    Where ``ridge_r2`` says whether a quantity can be read from the features at all, this says how much of the
    features it moves: a gradient-trained layer on top learns the directions of large variance first, so a
    quantity that lies along directions of little variance is learned late.
    """
    x = features.double() - features.double().mean(0)
    y = target.double() - target.double().mean(0)
    fitted = y @ torch.linalg.lstsq(y, x).solution
    return (fitted.pow(2).sum() / x.pow(2).sum()).item()
