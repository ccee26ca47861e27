"""Moving occluding shapes over an image: positions, bouncing motion and the covered pixels."""

from __future__ import annotations

import numpy as np

SHAPES = ("rect", "disc", "bar")


class MovingOccluders:
    """``n`` shapes of ``size`` pixels moving at ``speed`` pixels per step, bouncing off the edges.

    ``"rect"`` and ``"disc"`` move in a random direction; ``"bar"`` is a full-height vertical bar of
    width ``size[1]`` moving left and right. Call :meth:`reset` with a generator, then :meth:`step`
    once per frame; :meth:`mask` gives the covered pixels.
    """

    def __init__(
        self,
        height: int,
        width: int,
        n: int = 1,
        size: tuple[int, int] = (16, 16),
        speed: tuple[float, float] = (1.0, 3.0),
        shape: str = "rect",
    ) -> None:
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n (number of occluders) must be an int >= 1, got {n!r}")
        if len(size) != 2 or not all(isinstance(s, (int, np.integer)) for s in size):
            raise ValueError(f"size must be two ints (height, width) in pixels, got {size!r}")
        if not (1 <= size[0] <= height and 1 <= size[1] <= width):
            raise ValueError(
                f"size {tuple(size)} must be at least 1 and fit the {height}x{width} image; use a smaller occluder"
            )
        if len(speed) != 2 or not 0 <= speed[0] <= speed[1]:
            raise ValueError(f"speed must be (low, high) with 0 <= low <= high pixels/step, got {speed!r}")
        self.height, self.width = height, width
        self.n, self.shape = int(n), shape
        self.size = (height if shape == "bar" else int(size[0]), int(size[1]))
        self.speed = (float(speed[0]), float(speed[1]))
        self._rows, self._cols = np.mgrid[0:height, 0:width]
        self.pos = np.zeros((self.n, 2))
        self.vel = np.zeros((self.n, 2))

    @property
    def _span(self) -> np.ndarray:
        """Largest top-left position per axis that keeps each shape inside the image."""
        return np.array([self.height - self.size[0], self.width - self.size[1]], dtype=np.float64)

    def reset(self, rng: np.random.Generator) -> None:
        """Random positions and velocities."""
        self.pos = rng.uniform(0.0, 1.0, size=(self.n, 2)) * self._span
        speed = rng.uniform(self.speed[0], self.speed[1], size=self.n)
        if self.shape == "bar":
            direction = np.stack([np.zeros(self.n), rng.choice([-1.0, 1.0], size=self.n)], axis=1)
        else:
            angle = rng.uniform(0.0, 2 * np.pi, size=self.n)
            direction = np.stack([np.sin(angle), np.cos(angle)], axis=1)
        self.vel = direction * speed[:, None]

    def step(self) -> None:
        """Move every shape one step, reflecting off the image borders."""
        span = self._span
        self.pos = self.pos + self.vel
        low, high = self.pos < 0, self.pos > span
        self.pos = np.where(low, -self.pos, np.where(high, 2 * span - self.pos, self.pos))
        self.pos = np.clip(self.pos, 0.0, span)
        self.vel = np.where(low | high, -self.vel, self.vel)

    def mask(self) -> np.ndarray:
        """Boolean (height, width) array of the pixels covered by any shape."""
        covered = np.zeros((self.height, self.width), dtype=bool)
        h, w = self.size
        for top, left in np.round(self.pos).astype(np.int64):
            if self.shape == "disc":
                cy, cx = top + (h - 1) / 2, left + (w - 1) / 2
                covered |= ((self._rows - cy) / (h / 2)) ** 2 + ((self._cols - cx) / (w / 2)) ** 2 <= 1.0
            else:
                covered[top : top + h, left : left + w] = True
        return covered
