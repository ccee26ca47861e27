"""Starting biases of LSTM-style gates spread over timescales: a deterministic, log-spaced variant of the chrono
initialisation (Tallec & Ollivier, 2018, who draw the timescales at random)."""

from __future__ import annotations

import math

import torch


def is_timescale(value: object) -> bool:
    """Whether ``value`` is a finite number of steps >= 2, a timescale a gate can start at."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 2


def chrono_biases(units: int, timescale_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and forget gate biases, each ``(units,)``, that start unit ``k`` holding over ``T_k`` steps.

    The timescales ``T_k`` spread evenly on a log scale from ``timescale_max`` (unit 0) down to 2 (the last
    unit). A forget gate of bias ``log(T - 1)`` keeps ``1 - 1/T`` of its cell each step, so what the cell holds
    decays over about ``T`` steps; its input gate starts at ``-log(T - 1)``, taking in ``1/T`` of each step's
    update, so a slow unit integrates where a fast one follows the input.
    """
    if not isinstance(units, int) or units < 1:
        raise ValueError(f"chrono_biases needs units >= 1; got {units!r}")
    if not is_timescale(timescale_max):
        raise ValueError(f"chrono_biases needs timescale_max a finite number of steps >= 2; got {timescale_max!r}")
    timescales = torch.exp(torch.linspace(math.log(timescale_max), math.log(2.0), units, dtype=torch.float64))
    forget = torch.log(timescales - 1.0).float()
    return -forget, forget
