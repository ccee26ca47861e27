"""The memory's update rule: a factorized 3-D conv emitting LSTM gates over the ``(h, c)`` grids."""

from __future__ import annotations

import torch
from torch import nn

from tmem_agents.gate_init import chrono_biases
from tmem_agents.ops.reference import ConvWeights


class FactorizedGateConv(nn.Module):
    """Depthwise 3-tap convs along D, H and W over ``concat(V, h)`` (``2C`` channels), then a 1x1x1
    pointwise mix to the four gate volumes ``(i, f, o, g)`` (``4C`` channels).

    The depthwise taps start as the identity (centre tap 1), so at initialisation the spatial mix is a
    no-op and training moves it from there. The gate order is ``(i, f, o, g)``; ``forget_bias`` starts
    the forget gate's bias in every channel, or ``forget_timescale_max``, when given, spreads the channels'
    input and forget biases over timescales from it down to 2 steps in its place
    (:func:`~tmem_agents.gate_init.chrono_biases`). The math lives in
    :func:`tmem_agents.ops.reference.factorized_conv` and the fused kernels; this module holds the parameters.
    """

    def __init__(self, channels: int, forget_bias: float = 0.0, forget_timescale_max: float | None = None) -> None:
        super().__init__()
        mixed = 2 * channels
        identity = torch.tensor([0.0, 1.0, 0.0]).repeat(mixed, 1)
        self.taps_d = nn.Parameter(identity.clone())
        self.taps_h = nn.Parameter(identity.clone())
        self.taps_w = nn.Parameter(identity.clone())
        self.bias_d = nn.Parameter(torch.zeros(mixed))
        self.bias_h = nn.Parameter(torch.zeros(mixed))
        self.bias_w = nn.Parameter(torch.zeros(mixed))
        self.pointwise = nn.Parameter(torch.empty(4 * channels, mixed))
        self.pointwise_bias = nn.Parameter(torch.zeros(4 * channels))
        nn.init.xavier_uniform_(self.pointwise)
        with torch.no_grad():
            if forget_timescale_max is None:
                self.pointwise_bias[channels : 2 * channels] = forget_bias
            else:
                input_bias, forget = chrono_biases(channels, forget_timescale_max)
                self.pointwise_bias[:channels] = input_bias
                self.pointwise_bias[channels : 2 * channels] = forget

    def weights(self) -> ConvWeights:
        """The parameters in the layout the memory-step operators take."""
        return ConvWeights(
            self.taps_d,
            self.bias_d,
            self.taps_h,
            self.bias_h,
            self.taps_w,
            self.bias_w,
            self.pointwise,
            self.pointwise_bias,
        )
