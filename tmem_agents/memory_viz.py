"""Pictures of what a Tensor Memory holds over an episode: grid projections next to the rendered frame.

Each step's memory ``h`` ``(C, D, H, W)`` is reduced to its activity per cell, the mean of ``|h|`` over
channels ``(D, H, W)``, and shown as three maximum projections: along D (an H x W top view), along H
(D x W) and along W (D x H). One colour scale holds for the whole episode, so brightness compares across
steps. :class:`MemoryRecorder` collects the steps and writes an animation and a summary picture.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import matplotlib
import numpy as np
from matplotlib.figure import Figure

PROJECTIONS = (("top: max over D", 0), ("front: max over H", 1), ("side: max over W", 2))
PANEL_PIXELS = 160
GAP = 4


def cell_activity(h: np.ndarray) -> np.ndarray:
    """Mean of ``|h|`` over channels: ``(C, D, H, W)`` -> ``(D, H, W)``."""
    return np.abs(h).mean(axis=0)


def projections(activity: np.ndarray) -> list[np.ndarray]:
    """The three maximum projections of a ``(D, H, W)`` activity volume."""
    return [activity.max(axis=axis) for _, axis in PROJECTIONS]


def _colour(values: np.ndarray, scale: float) -> np.ndarray:
    """Values in ``[0, scale]`` -> viridis RGB, uint8, each cell enlarged to a square panel."""
    norm = np.clip(values / max(scale, 1e-12), 0.0, 1.0)
    rgb = (matplotlib.colormaps["viridis"](norm)[..., :3] * 255).astype(np.uint8)
    factor = max(1, PANEL_PIXELS // max(values.shape))
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def _fit_height(image: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour resize of an RGB image to ``height`` rows, keeping its aspect ratio."""
    rows = np.linspace(0, image.shape[0] - 1, height).round().astype(int)
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    cols = np.linspace(0, image.shape[1] - 1, width).round().astype(int)
    return image[rows][:, cols, :3]


def _hstack(images: list[np.ndarray]) -> np.ndarray:
    height = max(image.shape[0] for image in images)
    padded = []
    for image in images:
        pad = np.zeros((height, image.shape[1] + GAP, 3), dtype=np.uint8)
        pad[: image.shape[0], : image.shape[1]] = image
        padded.append(pad)
    return np.concatenate(padded, axis=1)[:, :-GAP]


def compose(activity: np.ndarray, scale: float, frame: np.ndarray | None = None) -> np.ndarray:
    """One animation frame: the rendered frame (if any) then the three projections, side by side."""
    panels = [_colour(p, scale) for p in projections(activity)]
    if frame is not None:
        panels.insert(0, _fit_height(np.asarray(frame, dtype=np.uint8), max(p.shape[0] for p in panels)))
    return _hstack(panels)


class MemoryRecorder:
    """Collects the memory grid (and the rendered frame) of each step of an episode."""

    def __init__(self) -> None:
        self.activity: list[np.ndarray] = []
        self.frames: list[np.ndarray | None] = []

    def __len__(self) -> int:
        return len(self.activity)

    def add(self, h: np.ndarray, frame: np.ndarray | None = None) -> None:
        """Record one step: ``h`` of one env ``(C, D, H, W)`` and the frame rendered at that step."""
        self.activity.append(cell_activity(np.asarray(h, dtype=np.float32)))
        self.frames.append(frame)

    @property
    def scale(self) -> float:
        return float(max(a.max() for a in self.activity)) if self.activity else 1.0

    def write_animation(self, path: Path, fps: int = 30) -> Path:
        """Write the episode as an mp4 or gif (by ``path``'s suffix); returns ``path``."""
        if not self.activity:
            raise ValueError("no steps recorded: nothing to animate")
        scale = self.scale
        images = [compose(a, scale, f) for a, f in zip(self.activity, self.frames, strict=True)]
        write_video(path, images, fps)
        return path

    def write_summary(self, path: Path, columns: int = 8) -> Path:
        """A PNG: the three projections at ``columns`` evenly spaced steps, and each cell's activity over time."""
        if not self.activity:
            raise ValueError("no steps recorded: nothing to draw")
        steps = np.unique(np.linspace(0, len(self.activity) - 1, min(columns, len(self.activity))).astype(int))
        scale = self.scale
        fig = Figure(figsize=(1.8 * len(steps), 8))
        axes = fig.subplots(4, len(steps), squeeze=False)
        for col, step in enumerate(steps):
            for row, ((title, _), proj) in enumerate(zip(PROJECTIONS, projections(self.activity[step]), strict=True)):
                ax = axes[row, col]
                ax.imshow(proj, vmin=0, vmax=scale, cmap="viridis")
                ax.set_xticks([])
                ax.set_yticks([])
                if col == 0:
                    ax.set_ylabel(title, fontsize=8)
            axes[0, col].set_title(f"step {step}", fontsize=9)
        for col in range(1, len(steps)):
            axes[3, col].remove()
        over_time = np.stack([a.reshape(-1) for a in self.activity], axis=1)
        wide = fig.add_subplot(4, 1, 4)
        axes[3, 0].remove()
        wide.imshow(over_time, aspect="auto", cmap="viridis", vmin=0, vmax=scale, interpolation="nearest")
        wide.set_xlabel("step")
        wide.set_ylabel("cell (D, H, W flattened)")
        wide.set_title("mean |h| over channels, per cell", fontsize=9)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        return path


def write_video(path: Path, frames: list[np.ndarray], fps: int = 30) -> None:
    """Write RGB frames as an mp4 (ffmpeg, sides padded to even sizes) or a gif, by ``path``'s suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
        return
    height = max(f.shape[0] for f in frames) + max(f.shape[0] for f in frames) % 2
    width = max(f.shape[1] for f in frames) + max(f.shape[1] for f in frames) % 2
    with imageio.get_writer(path, fps=fps, macro_block_size=1) as writer:
        for frame in frames:
            canvas = np.zeros((height, width, 3), dtype=np.uint8)
            canvas[: frame.shape[0], : frame.shape[1]] = frame[..., :3]
            writer.append_data(canvas)
