"""Scripted control of the two-link Reacher arm: inverse kinematics and a PD law on joint angles."""

from __future__ import annotations

import numpy as np

LINK_LENGTHS = (0.1, 0.11)


def wrap_angle(angle: np.ndarray | float) -> np.ndarray:
    """Angle(s) wrapped into [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


def inverse_kinematics(goal: np.ndarray, elbow: float) -> np.ndarray:
    """Joint angles putting the fingertip at ``goal`` (clamped into reach), elbow bent like ``elbow``."""
    l1, l2 = LINK_LENGTHS
    r = float(np.clip(np.linalg.norm(goal), abs(l1 - l2) + 1e-6, l1 + l2 - 1e-6))
    cos_q2 = (r**2 - l1**2 - l2**2) / (2 * l1 * l2)
    q2 = float(np.arccos(np.clip(cos_q2, -1.0, 1.0))) * (1.0 if elbow >= 0 else -1.0)
    q1 = np.arctan2(goal[1], goal[0]) - np.arctan2(l2 * np.sin(q2), l1 + l2 * np.cos(q2))
    return np.array([q1, q2])


def fingertip(q: np.ndarray) -> np.ndarray:
    """Fingertip (x, y) for joint angles ``q``."""
    l1, l2 = LINK_LENGTHS
    return np.array([l1 * np.cos(q[0]) + l2 * np.cos(q[0] + q[1]), l1 * np.sin(q[0]) + l2 * np.sin(q[0] + q[1])])


def reach_action(
    q: np.ndarray, qdot: np.ndarray, goal: np.ndarray | None, kp: float = 0.7, kd: float = 0.15
) -> np.ndarray:
    """Torque (in [-1, 1]^2) driving the fingertip to ``goal``; with no goal, brake to a halt."""
    if goal is None:
        return np.clip(-kd * qdot, -1.0, 1.0).astype(np.float32)
    target = inverse_kinematics(goal, elbow=q[1])
    error = wrap_angle(target - q)
    return np.clip(kp * error - kd * qdot, -1.0, 1.0).astype(np.float32)
