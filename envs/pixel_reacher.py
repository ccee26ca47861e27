"""Pixel reacher: track a moving target in 64x64 frames while a moving bar hides it for stretches."""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

from tmem_agents.envs.memory_reacher import SUCCESS_DISTANCE
from tmem_agents.envs.occluders import MovingOccluders

CAMERA_DISTANCE = 0.75
TARGET_SIZE = 0.02
FINGERTIP_SIZE = 0.015
ORBIT_RADIUS = (0.08, 0.19)
ANGULAR_SPEED = (0.5, 1.5)


class PixelReacherEnv(ReacherEnv):
    """The Reacher-v5 arm chasing a target that circles the base, seen from above in RGB frames.

    Each episode the target orbits the arm's base at a radius in [0.08, 0.19] with an angular
    speed of 0.5 to 1.5 rad/s (either direction). A black vertical bar ``occluder_width`` pixels
    wide sweeps left and right at ``occluder_speed`` pixels per step, bouncing off the borders, and
    hides everything under it: the target, and at times the arm.

    Observation: Box(0, 255, (size, size, 3), uint8), rendered offscreen (no shadows, no
    multisampling). Action as Reacher-v5. Reward: ``-distance - 0.1 |a|^2`` per step. The episode is
    truncated after ``max_steps`` steps (100, two seconds). ``info`` gives ``distance``,
    ``is_success`` (distance < ``success_distance``) and ``target_visible`` at every step, and
    ``final_distance`` at the last step.
    """

    def __init__(
        self,
        size: int = 64,
        max_steps: int = 100,
        occluder_width: int = 24,
        occluder_speed: tuple[float, float] = (0.5, 1.0),
        success_distance: float = SUCCESS_DISTANCE,
        **kwargs: Any,
    ) -> None:
        if not isinstance(size, (int, np.integer)) or not 16 <= size <= 480:
            raise ValueError(f"size must be an int in [16, 480] pixels, got {size!r}")
        if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
            raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
        if not success_distance > 0:
            raise ValueError(f"success_distance must be > 0, got {success_distance!r}")
        self.size, self.max_steps = int(size), int(max_steps)
        self.success_distance = float(success_distance)
        self.occluders = MovingOccluders(
            self.size, self.size, n=1, size=(self.size, occluder_width), speed=occluder_speed, shape="bar"
        )
        self.orbit = np.zeros(3)
        self.target_visible = True
        self._t = 0
        super().__init__(**kwargs)
        model = self.model
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        target = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "target")
        model.geom_size[target, 0] = TARGET_SIZE
        model.geom_rgba[target] = (1.0, 0.0, 0.0, 1.0)
        model.geom_size[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "fingertip"), 0] = FINGERTIP_SIZE
        self._renderer = mujoco.Renderer(model, self.size, self.size)
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        self._camera.lookat[:] = (0.0, 0.0, 0.0)
        self._camera.distance, self._camera.elevation, self._camera.azimuth = CAMERA_DISTANCE, -90.0, 90.0
        half_view = (CAMERA_DISTANCE - 0.01) * np.tan(np.deg2rad(model.vis.global_.fovy) / 2)
        self._pixels_per_metre = (self.size / 2) / half_view
        self.observation_space = spaces.Box(0, 255, shape=(self.size, self.size, 3), dtype=np.uint8)

    def target_position(self) -> np.ndarray:
        """Current (x, y) of the target."""
        radius, angle, _ = self.orbit
        return np.array([radius * np.cos(angle), radius * np.sin(angle)])

    def to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """(row, col) of a point of the arena plane in the frame."""
        centre = (self.size - 1) / 2
        return np.array([centre - xy[1] * self._pixels_per_metre, centre + xy[0] * self._pixels_per_metre])

    def distance(self) -> float:
        """Distance from the fingertip to the target in the plane."""
        return float(np.linalg.norm(self.get_body_com("fingertip")[:2] - self.target_position()))

    def _place_target(self) -> None:
        self.data.qpos[2:4] = self.target_position()
        self.data.qvel[2:4] = 0.0
        mujoco.mj_kinematics(self.model, self.data)

    def _target_hidden(self, covered: np.ndarray) -> bool:
        """True when every pixel within the target's radius is covered."""
        row, col = self.to_pixel(self.target_position())
        reach = TARGET_SIZE * self._pixels_per_metre
        rows, cols = np.ogrid[: self.size, : self.size]
        disc = (rows - row) ** 2 + (cols - col) ** 2 <= reach**2
        return bool(np.all(covered[disc]))

    def _get_obs(self) -> np.ndarray:
        self._renderer.update_scene(self.data, camera=self._camera)
        frame = self._renderer.render()
        covered = self.occluders.mask()
        frame[covered] = 0
        self.target_visible = not self._target_hidden(covered)
        return frame

    def reset_model(self) -> np.ndarray:
        """Arm as in Reacher-v5; new orbit for the target and new occluder motion."""
        self._t = 0
        qpos = self.init_qpos + self.np_random.uniform(low=-0.1, high=0.1, size=self.model.nq)
        qvel = self.init_qvel + self.np_random.uniform(low=-0.005, high=0.005, size=self.model.nv)
        radius = self.np_random.uniform(*ORBIT_RADIUS)
        angle = self.np_random.uniform(0.0, 2 * np.pi)
        speed = self.np_random.uniform(*ANGULAR_SPEED) * self.np_random.choice([-1.0, 1.0])
        self.orbit = np.array([radius, angle, speed])
        self.set_state(qpos, qvel)
        self._place_target()
        self.occluders.reset(self.np_random)
        return self._get_obs()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move the arm, the target and the occluder; render the frame."""
        action = np.asarray(action, dtype=np.float64)
        self.do_simulation(action, self.frame_skip)
        self._t += 1
        self.orbit[1] += self.orbit[2] * self.dt
        self._place_target()
        self.occluders.step()
        obs = self._get_obs()
        distance = self.distance()
        reward_dist = -distance * self._reward_dist_weight
        reward_ctrl = -self._reward_control_weight * float(np.square(action).sum())
        info: dict[str, Any] = {
            "reward_dist": reward_dist,
            "reward_ctrl": reward_ctrl,
            "distance": distance,
            "is_success": distance < self.success_distance,
            "target_visible": self.target_visible,
        }
        truncated = self._t >= self.max_steps
        if truncated:
            info["final_distance"] = distance
        if self.render_mode == "human":
            self.render()
        return obs, reward_dist + reward_ctrl, False, truncated, info

    def close(self) -> None:
        """Free the offscreen renderer, then the env."""
        self._renderer.close()
        super().close()
