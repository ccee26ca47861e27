"""Memory operators: Gaussian write, trilinear read and the fused memory step, with backends."""

from tmem_agents.ops.dispatch import (
    BACKENDS,
    memory_step,
    resolve_backend,
    splat_write,
    trilinear_read,
    triton_installed,
    triton_interpreted,
    write_mass,
)
from tmem_agents.ops.reference import ConvWeights

__all__ = [
    "BACKENDS",
    "ConvWeights",
    "memory_step",
    "resolve_backend",
    "splat_write",
    "trilinear_read",
    "triton_installed",
    "triton_interpreted",
    "write_mass",
]
