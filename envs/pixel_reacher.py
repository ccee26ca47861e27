"""Pixel reachers: the Reacher-v5 arm seen from above in RGB frames, with the target hidden for stretches.

* :class:`PixelReacherEnv`: track a moving target while a sweeping bar hides it;
* :class:`PixelMemoryReacherEnv`: reach a still target shown in the first frames only, with the arm's joints.
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

from tmem_agents.envs.memory_reacher import SUCCESS_DISTANCE, check_hold_schedule
from tmem_agents.envs.occluders import MovingOccluders

CAMERA_DISTANCE = 0.75
TARGET_SIZE = 0.02
FINGERTIP_SIZE = 0.015
ORBIT_RADIUS = (0.08, 0.19)
ANGULAR_SPEED = (0.5, 1.5)


class PixelReacherEnv(ReacherEnv):
    """The Reacher-v5 arm chasing a target that circles the base, seen from above in RGB frames.

    Each episode the target orbits the arm's base at a radius in [0.08, 0.19] with an angular
    speed drawn from ``angular_speed`` (0.5 to 1.5 rad/s, either direction). A black vertical bar
    ``occluder_width`` pixels wide (0: no bar) sweeps left and right at ``occluder_speed`` pixels per
    step, bouncing off the borders, and hides everything under it: the target, and at times the arm.

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
        angular_speed: tuple[float, float] = ANGULAR_SPEED,
        success_distance: float = SUCCESS_DISTANCE,
        **kwargs: Any,
    ) -> None:
        if not isinstance(size, (int, np.integer)) or not 16 <= size <= 480:
            raise ValueError(f"size must be an int in [16, 480] pixels, got {size!r}")
        if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
            raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
        if not success_distance > 0:
            raise ValueError(f"success_distance must be > 0, got {success_distance!r}")
        if len(angular_speed) != 2 or not 0 <= angular_speed[0] <= angular_speed[1]:
            raise ValueError(f"angular_speed must be (low, high) rad/s with 0 <= low <= high, got {angular_speed!r}")
        self.size, self.max_steps = int(size), int(max_steps)
        self.success_distance = float(success_distance)
        self.angular_speed = (float(angular_speed[0]), float(angular_speed[1]))
        self.occluders = (
            MovingOccluders(
                self.size, self.size, n=1, size=(self.size, occluder_width), speed=occluder_speed, shape="bar"
            )
            if occluder_width != 0
            else None
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

    def _render(self) -> np.ndarray:
        """The frame from above, ``(size, size, 3)`` uint8, before any occluder."""
        self._renderer.update_scene(self.data, camera=self._camera)
        return self._renderer.render()

    def _get_obs(self) -> np.ndarray:
        frame = self._render()
        if self.occluders is not None:
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
        speed = self.np_random.uniform(*self.angular_speed) * self.np_random.choice([-1.0, 1.0])
        self.orbit = np.array([radius, angle, speed])
        self.set_state(qpos, qvel)
        self._place_target()
        if self.occluders is not None:
            self.occluders.reset(self.np_random)
        return self._get_obs()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move the arm, the target and the occluder; render the frame."""
        action = np.asarray(action, dtype=np.float64)
        self.do_simulation(action, self.frame_skip)
        self._t += 1
        self.orbit[1] += self.orbit[2] * self.dt
        self._place_target()
        if self.occluders is not None:
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


class PixelMemoryReacherEnv(PixelReacherEnv):
    """The pixel reacher as a memory task: a still target, drawn in the first frames only, and the arm's joints.

    The target stands still at a radius in [0.08, 0.19] from the base and is drawn in the first
    ``visible_steps`` (5) frames only; after that it is no longer rendered, as if covered by a lid the
    colour of the floor. The arm is held (zero torque, whatever the action) for the first
    ``hold_steps`` (15) steps, so a policy must carry where the target was, read from pixels, until it
    may move. There is no bar. The episode is truncated after ``max_steps`` steps (60).

    Observation: Dict with ``pixels``, Box(0, 255, (size, size, 3), uint8), and ``proprio``, Box (7,)
    float32: cos and sin of the two joint angles, the joint velocities, and a flag that is 1 once the
    arm may move. The target's position is in the pixels only. Reward and ``info`` as
    :class:`PixelReacherEnv`.
    """

    def __init__(self, visible_steps: int = 5, hold_steps: int = 15, max_steps: int = 60, **kwargs: Any) -> None:
        check_hold_schedule(visible_steps, hold_steps, max_steps)
        self.visible_steps, self.hold_steps = int(visible_steps), int(hold_steps)
        super().__init__(max_steps=max_steps, occluder_width=0, angular_speed=(0.0, 0.0), **kwargs)
        self._target_geom = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "target")
        self.observation_space = spaces.Dict(
            {
                "pixels": self.observation_space,
                "proprio": spaces.Box(-np.inf, np.inf, shape=(7,), dtype=np.float32),
            }
        )

    def _get_obs(self) -> dict[str, np.ndarray]:
        self.target_visible = self._t < self.visible_steps
        self.model.geom_rgba[self._target_geom, 3] = float(self.target_visible)
        qpos, qvel = self.data.qpos[:2], self.data.qvel[:2]
        arm_free = float(self._t >= self.hold_steps)
        proprio = np.concatenate([np.cos(qpos), np.sin(qpos), qvel, [arm_free]]).astype(np.float32)
        return {"pixels": self._render(), "proprio": proprio}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Step the arm (held during the first ``hold_steps``) and render the frame."""
        if self._t < self.hold_steps:
            action = np.zeros(self.action_space.shape, dtype=self.action_space.dtype)
        return super().step(action)
