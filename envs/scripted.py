"""Scripted reference policies for the tasks, with a window of ``memory`` past observations.

``memory=1`` sees only the current observation (memoryless), ``memory=n`` the last ``n`` (what a
frame stack of ``n`` gives), ``memory=None`` everything since reset (an oracle with perfect
memory). The same code gives the reference scores in the docs and the tests.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control import CartPoleEnv

from tmem_agents.envs.reacher_control import reach_action, wrap_angle


class Policy(Protocol):
    """A scripted policy: ``reset`` at each episode start, then ``act`` on every observation."""

    def reset(self) -> None:
        """Forget the previous episode."""

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> Any:
        """The action for observation ``obs``."""


class _WindowedPolicy:
    """Keeps the last ``memory`` items (all of them with None)."""

    def __init__(self, memory: int | None = None) -> None:
        if memory is not None and (not isinstance(memory, (int, np.integer)) or memory < 1):
            raise ValueError(f"memory must be an int >= 1 (1 = memoryless) or None (unbounded), got {memory!r}")
        self.memory = memory
        self.window: deque[Any] = deque(maxlen=memory)

    def reset(self) -> None:
        """Forget the previous episode."""
        self.window.clear()


class CueRecallPolicy(_WindowedPolicy):
    """Names the cue if it is still in the window at the query, else guesses cue 0."""

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> int:
        """The remembered cue at the query; 0 otherwise."""
        self.window.append(obs)
        for past in reversed(self.window):
            if past[:-1].any():
                return int(np.argmax(past[:-1]))
        return 0


class SpatialRecallPolicy(_WindowedPolicy):
    """Points to the queried object if its position is still in the window, else to the centre."""

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """The remembered position of the queried object at the query; the centre otherwise."""
        self.window.append(obs)
        n = (obs.shape[0] - 2) // 3
        if obs[-1] == 1.0:
            query = int(np.argmax(obs[2 * n : 3 * n]))
            for past in reversed(self.window):
                if past[-2] == 1.0:
                    return past[2 * query : 2 * query + 2].astype(np.float32)
        return np.zeros(2, dtype=np.float32)


class CartPolePolicy(_WindowedPolicy):
    """Linear control of CartPoleOccluded on an estimate of the state (x, x_dot, theta, theta_dot).

    With a window (``memory=n``) the positions come from the latest visible observation in it and
    the velocities from the difference of the last two observations when both are visible (else
    0). With ``memory=None`` it runs an observer: it recovers the state exactly from two visible
    observations and predicts it through occlusion with CartPole's own (deterministic) dynamics.
    """

    gains = np.array([0.1, 0.5, 3.0, 1.0])

    def __init__(self, memory: int | None = None) -> None:
        super().__init__(2 if memory is None else memory)
        self.memory = memory
        self.observer = memory is None
        self._model = CartPoleEnv()
        self._model.reset(seed=0)
        self._state: np.ndarray | None = None
        self._action = 0

    def reset(self) -> None:
        """Forget the previous episode."""
        super().reset()
        self._state = None
        self._action = 0

    def _predict(self, state: np.ndarray, action: int) -> np.ndarray:
        self._model.state = state
        self._model.steps_beyond_terminated = None
        return np.asarray(self._model.step(action)[0], dtype=np.float64)

    def _velocities(self, newer: np.ndarray, older: np.ndarray) -> np.ndarray:
        return (newer[[0, 2]] - older[[0, 2]]) / self._model.tau

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        seen = list(self.window)
        if self._state is None:
            return np.array([obs[0], 0.0, obs[2], 0.0])
        if seen[-1] is None:
            return self._predict(self._state, self._action)
        if len(seen) == 2 and seen[-2] is not None:
            older = seen[-2].astype(np.float64)
            x_dot, theta_dot = self._velocities(seen[-1], older)
            return self._predict(np.array([older[0], x_dot, older[2], theta_dot]), self._action)
        predicted = self._predict(self._state, self._action)
        return np.array([obs[0], predicted[1], obs[2], predicted[3]])

    def _from_window(self) -> np.ndarray:
        seen = list(self.window)
        state = np.zeros(4)
        latest = next((o for o in reversed(seen) if o is not None), None)
        if latest is not None:
            state[[0, 2]] = latest[[0, 2]]
        if len(seen) >= 2 and seen[-1] is not None and seen[-2] is not None:
            state[[1, 3]] = self._velocities(seen[-1], seen[-2])
        return state

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> int:
        """Push right when the gains times the state estimate is positive."""
        self.window.append(None if info.get("occluded", False) else obs)
        if self.observer:
            self._state = self._observe(obs)
            state = self._state
        else:
            state = self._from_window()
        self._action = int(self.gains @ state > 0)
        return self._action


def _joints(obs: np.ndarray) -> np.ndarray:
    return np.arctan2(obs[2:4], obs[0:2])


class _ReacherPolicy(_WindowedPolicy):
    """A windowed policy driving the Reacher arm with PD gains ``kp`` and ``kd``."""

    def __init__(self, memory: int | None = None, kp: float = 0.7, kd: float = 0.15) -> None:
        super().__init__(memory)
        self.kp, self.kd = kp, kd


class MemoryReacherPolicy(_ReacherPolicy):
    """Once the arm is free, reaches for the last target seen in the window; else brakes."""

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """PD torque towards the remembered target."""
        self.window.append(obs)
        goal = next((past[4:6] for past in reversed(self.window) if past[10] == 1.0), None)
        if obs[11] == 0.0:
            goal = None
        return reach_action(_joints(obs), obs[6:8], goal, self.kp, self.kd)


class MultiTargetReacherPolicy(_ReacherPolicy):
    """Once cued, reaches for the cued target if the targets are still in the window; else brakes."""

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """PD torque towards the remembered cued target."""
        self.window.append(obs)
        k = (obs.shape[0] - 10) // 3
        goal = None
        if obs[-1] == 1.0:
            cue = int(np.argmax(obs[8 + 2 * k : 8 + 3 * k]))
            shown = next((past for past in reversed(self.window) if past[-2] == 1.0), None)
            if shown is not None:
                goal = shown[8 + 2 * cue : 10 + 2 * cue]
        return reach_action(_joints(obs), obs[4:6], goal, self.kp, self.kd)


class PixelReacherPolicy(_ReacherPolicy):
    """Reads the arm and, only while it is visible, the target from the simulator state.

    Within the window it extrapolates the target along its orbit from the last two sightings (or
    holds the last one); with no sighting left it brakes. It stands for what a policy that parsed
    the frames perfectly could do with that much memory. Its gains are stiffer than the other
    reachers' defaults, to keep up with the moving target.
    """

    def __init__(self, env: gym.Env, memory: int | None = None, kp: float = 2.0, kd: float = 0.15) -> None:
        super().__init__(memory, kp, kd)
        self.env = env.unwrapped
        self._t = 0

    def reset(self) -> None:
        """Forget the previous episode."""
        super().reset()
        self._t = 0

    def _goal(self) -> np.ndarray | None:
        sightings = [(t, xy) for t, xy in self.window if xy is not None]
        if not sightings:
            return None
        t1, xy1 = sightings[-1]
        if len(sightings) == 1:
            return xy1
        t0, xy0 = sightings[-2]
        angle0, angle1 = np.arctan2(xy0[1], xy0[0]), np.arctan2(xy1[1], xy1[0])
        rate = wrap_angle(angle1 - angle0) / (t1 - t0)
        angle = angle1 + rate * (self._t - t1)
        return np.linalg.norm(xy1) * np.array([np.cos(angle), np.sin(angle)])

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """PD torque towards the remembered (extrapolated) target."""
        env = self.env
        seen = env.target_position() if env.target_visible else None
        self.window.append((self._t, seen))
        goal = self._goal()
        self._t += 1
        return reach_action(env.data.qpos[:2].copy(), env.data.qvel[:2].copy(), goal, self.kp, self.kd)


def evaluate(env: gym.Env, policy: Policy, episodes: int, seed: int = 0) -> dict[str, float]:
    """Mean return, success rate and final distance of ``policy`` over episodes seeded ``seed + i``.

    Success rate and final distance come from the last step's ``info`` (``is_success``,
    ``final_distance`` or ``distance``); they are NaN for tasks that do not report them.
    """
    returns, successes, distances = [], [], []
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        policy.reset()
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy.act(obs, info))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
        successes.append(float(info.get("is_success", np.nan)))
        distances.append(float(info.get("final_distance", info.get("distance", np.nan))))
    return {
        "return": float(np.mean(returns)),
        "success_rate": float(np.mean(successes)),
        "final_distance": float(np.mean(distances)),
    }
