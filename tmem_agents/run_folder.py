"""The run folder: where a run's config, logs, checkpoints, models and results live, written atomically.

Layout (see ``docs/cli.md``)::

    config.yaml                 the resolved config the run used
    .hydra/                     Hydra's composed config and the command-line overrides
    train.log                   Hydra's job log
    logs/                       progress.csv and TensorBoard events (SB3 logger)
    checkpoints/step_<N>.zip    periodic checkpoints (+ vecnormalize_<N>.pkl)
    best/model.zip              best model by periodic evaluation (+ vecnormalize.pkl, eval.json)
    model.zip                   final model (+ vecnormalize.pkl)
    summary.json                final evaluation; written last, so it marks a finished run
    eval.json, videos/          written by tmem-eval

Models, checkpoints, normalization statistics, ``config.yaml`` and the JSON records are written to a temporary
name in their folder and renamed into place (``os.replace``), so a crash never leaves a half-written checkpoint
or result; logs and videos are written in place by their libraries.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tmem_agents.config_schema import ConfigError

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)\.zip$")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path`` (same suffix), then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


class RunFolder:
    """Paths of one run folder and the operations on its checkpoints and models."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def final_model(self) -> Path:
        return self.root / "model.zip"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def finished(self) -> bool:
        return self.summary.is_file()

    def checkpoint_path(self, timesteps: int) -> Path:
        return self.checkpoints / f"step_{timesteps:012d}.zip"

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """``(timesteps, path)`` of every periodic checkpoint, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for path in self.checkpoints.iterdir():
            match = CHECKPOINT_PATTERN.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        checkpoints = self.list_checkpoints()
        return checkpoints[-1][1] if checkpoints else None

    def require_config(self, key: str) -> None:
        """Raise :class:`ConfigError` unless the folder holds a run (its ``config.yaml``)."""
        if not self.root.is_dir():
            raise ConfigError(f"{key}={str(self.root)!r}: no such folder")
        if not self.config.is_file():
            raise ConfigError(f"{key}={str(self.root)!r}: not a run folder (no config.yaml written by tmem-train)")

    def require_unused(self, key: str) -> None:
        """Raise :class:`ConfigError` naming ``key`` if the folder already holds a run (its ``config.yaml``)."""
        if self.config.is_file():
            raise ConfigError(
                f"{key}={str(self.root)!r}: the folder already holds a run (config.yaml); continue it with "
                f"resume={self.root}, train into another folder, or delete it to start over"
            )

    def resume_point(self, key: str) -> tuple[Path, int]:
        """Where the run continues from and its timestep: the final model of a finished run (``summary.json``),
        else the newest checkpoint; raise :class:`ConfigError` naming ``key`` if there is neither."""
        self.require_config(key)
        if self.finished and self.final_model.is_file():
            return self.final_model, int(json.loads(self.summary.read_text())["timesteps"])
        checkpoints = self.list_checkpoints()
        if not checkpoints:
            raise ConfigError(f"{key}={str(self.root)!r}: the run has no checkpoint in {self.checkpoints} to resume")
        steps, path = checkpoints[-1]
        return path, steps

    def model_path(self, which: str) -> Path:
        """The model ``final``, ``best``, ``last`` (newest checkpoint) or at the path ``which`` (a checkpoint's,
        as given or inside the run folder: ``checkpoints/step_<N>.zip``); raise :class:`ConfigError` if absent."""
        paths = {"final": self.final_model, "best": self.best / "model.zip", "last": self.latest_checkpoint()}
        if which not in paths:
            for path in (Path(which), self.root / which):
                if path.is_file() and path.suffix == ".zip":
                    return path
            raise ConfigError(
                f"checkpoint={which!r}: must be one of {list(paths)} or the path of a saved model, a .zip "
                f"(as given, or inside the run folder {self.root})"
            )
        path = paths[which]
        if path is None or not path.is_file():
            raise ConfigError(
                f"checkpoint={which!r}: the run folder {self.root} has no {which} model "
                f"(available: {[name for name, p in paths.items() if p is not None and p.is_file()]})"
            )
        return path

    def relative(self, path: Path) -> str:
        """``path`` relative to the run folder if it lies inside it (the record stays true when the folder
        moves), else ``path`` as given."""
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)


def normalization_path(model_path: Path) -> Path:
    """Where the VecNormalize statistics saved with ``model_path`` live (they may not exist)."""
    match = CHECKPOINT_PATTERN.match(model_path.name)
    if match:
        return model_path.with_name(f"vecnormalize_{match.group(1)}.pkl")
    return model_path.with_name("vecnormalize.pkl")
