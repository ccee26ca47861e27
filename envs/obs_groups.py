"""Named groups of observation entries, so wrappers can hide e.g. "velocities" by name."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np

# Leading qpos entries that Gymnasium's locomotion tasks leave out of the observation by default
# (the root's x, or x and y, position).
_EXCLUDED_ROOT_POSITIONS = {
    "HalfCheetahEnv": 1,
    "HopperEnv": 1,
    "Walker2dEnv": 1,
    "SwimmerEnv": 2,
    "AntEnv": 2,
}

_FIXED_GROUPS = {
    "CartPoleEnv": {"positions": [0, 2], "velocities": [1, 3]},
    "PendulumEnv": {"positions": [0, 1], "velocities": [2]},
    "InvertedPendulumEnv": {"positions": [0, 1], "velocities": [2, 3]},
    "ReacherEnv": {
        "joint_angles": [0, 1, 2, 3],
        "target": [4, 5],
        "velocities": [6, 7],
        "fingertip_to_target": [8, 9],
    },
}


def _locomotion_groups(base: gym.Env, excluded: int) -> dict[str, list[int]]:
    """Groups of a Gymnasium locomotion task: qpos (minus the root), qvel, then any extras."""
    if not getattr(base, "_exclude_current_positions_from_observation", True):
        excluded = 0
    n_pos = base.model.nq - excluded
    n_vel = base.model.nv
    groups = {
        "positions": list(range(n_pos)),
        "velocities": list(range(n_pos, n_pos + n_vel)),
    }
    n_obs = int(np.prod(base.observation_space.shape))
    if n_obs > n_pos + n_vel:
        groups["contact_forces"] = list(range(n_pos + n_vel, n_obs))
    return groups


def observation_groups(env: gym.Env) -> dict[str, list[int]]:
    """Named groups of entries of ``env``'s flat observation.

    An env (or wrapper) may define its own as an ``obs_groups`` attribute; otherwise the groups of
    the Gymnasium tasks listed in this module are used. Raises ValueError for an unknown env.
    """
    try:
        groups = env.get_wrapper_attr("obs_groups")
    except AttributeError:
        groups = None
    if groups is not None:
        return {name: list(idx) for name, idx in groups.items()}
    base = env.unwrapped
    name = type(base).__name__
    if name in _FIXED_GROUPS:
        return {k: list(v) for k, v in _FIXED_GROUPS[name].items()}
    if name in _EXCLUDED_ROOT_POSITIONS:
        return _locomotion_groups(base, _EXCLUDED_ROOT_POSITIONS[name])
    known = sorted([*_FIXED_GROUPS, *_EXCLUDED_ROOT_POSITIONS])
    raise ValueError(
        f"{name} has no named observation groups; pass integer indices instead, or give the env an "
        f"`obs_groups` attribute (dict of name -> indices). Envs with named groups: {', '.join(known)}"
    )


def resolve_entries(env: gym.Env, entries: Sequence[int | str], size: int) -> np.ndarray:
    """Sorted unique flat indices for ``entries`` (ints, or group names of ``env``).

    Raises ValueError for an empty selection, an index outside ``[-size, size)`` or an unknown name.
    """
    if isinstance(entries, (str, int, np.integer)):
        entries = [entries]
    if len(entries) == 0:
        raise ValueError("entries is empty: give at least one index or group name, or None for all")
    out: list[int] = []
    groups: dict[str, list[int]] | None = None
    for entry in entries:
        if isinstance(entry, str):
            if groups is None:
                groups = observation_groups(env)
            if entry not in groups:
                raise ValueError(f"unknown observation group {entry!r}; known groups: {', '.join(sorted(groups))}")
            out.extend(groups[entry])
        elif isinstance(entry, (int, np.integer)) and not isinstance(entry, bool):
            if not -size <= entry < size:
                raise ValueError(
                    f"index {entry} is out of range for an observation of {size} entries; use indices in [0, {size})"
                )
            out.append(int(entry) % size)
        else:
            raise ValueError(f"entries must be ints or group names (str), got {entry!r}")
    return np.unique(np.asarray(out, dtype=np.int64))
