"""How much of PPO's clipped step reaches an agent's convolutions (its image encoder's).

MemoryPPO clips each minibatch's whole gradient to norm ``max_grad_norm``. This trains a fresh agent, built from
the same Hydra overrides as ``tmem-train``, for ``--steps`` steps (or, with ``--run``, a run's final model for one
more rollout) and records, before every clipping, the norm of the whole gradient and of the convolutions' part
(every 4-D parameter: the Nature CNN's or keypoint stem's kernels). It prints the medians over the minibatches:
the whole norm, the convolutions' norm and share of it, and the convolutions' norm after clipping, which is what
moves them.

    python scripts/gradient_shares.py --steps 2048 env=pixel_memory_reacher algo=ppo_pixel model=lstm
    python scripts/gradient_shares.py --run <run dir>
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import OmegaConf

from tmem_agents.algos import MemoryPPO
from tmem_agents.config_schema import compose, validate_train
from tmem_agents.env_factory import make_envs, normalize
from tmem_agents.run_folder import RunFolder, normalization_path
from tmem_agents.train import build_model


@contextlib.contextmanager
def recording_gradient_norms() -> Iterator[list[tuple[float, float]]]:
    """Within the block, every ``torch.nn.utils.clip_grad_norm_`` first appends ``(whole norm, convolutions'
    norm)`` of the gradients it is given to the yielded list."""
    clip = torch.nn.utils.clip_grad_norm_
    norms: list[tuple[float, float]] = []

    def recording_clip(parameters, max_norm, *args, **kwargs):  # noqa: ANN001, ANN202
        parameters = [p for p in parameters if p.grad is not None]
        whole = torch.stack([p.grad.norm() for p in parameters]).norm()
        conv = [p.grad.norm() for p in parameters if p.dim() == 4]
        norms.append((float(whole), float(torch.stack(conv).norm()) if conv else 0.0))
        return clip(parameters, max_norm, *args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = recording_clip
    try:
        yield norms
    finally:
        torch.nn.utils.clip_grad_norm_ = clip


def gradient_shares(model: MemoryPPO, steps: int) -> dict[str, float]:
    """Train ``model`` ``steps`` more steps and return the medians over its minibatches of the whole gradient's
    norm, the convolutions' norm, their share, and their norm after clipping at ``model.max_grad_norm``."""
    with recording_gradient_norms() as norms:
        model.learn(total_timesteps=steps, reset_num_timesteps=True)
    if not norms:
        raise SystemExit(f"--steps {steps} made no update; give at least one rollout's worth of steps")
    whole, conv = torch.tensor(norms, dtype=torch.float64).T
    clipped = conv * (model.max_grad_norm / whole).clamp(max=1.0)
    return {
        "minibatches": float(len(whole)),
        "whole": float(whole.median()),
        "convolutions": float(conv.median()),
        "share": float((conv / whole).median()),
        "convolutions_clipped": float(clipped.median()),
    }


def trained_model(run_dir: str) -> MemoryPPO:
    """A run's final model with ``n_envs`` envs of its task, normalised from its saved statistics as in training
    (rewards too: :func:`tmem_agents.evaluate.eval_env`'s raw rewards would change the gradients measured)."""
    run = RunFolder(run_dir)
    run.require_config("run_dir")
    cfg = OmegaConf.load(run.config)
    model_path = run.model_path("final")
    env = normalize(make_envs(cfg.env, cfg.algo.n_envs, seed=cfg.seed), cfg.algo, normalization_path(model_path))
    return MemoryPPO.load(model_path, env=env, device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="tmem-train's Hydra overrides for a fresh agent")
    parser.add_argument("--steps", type=int, default=2048, help="steps to train (fresh: from its start)")
    parser.add_argument("--run", type=Path, help="measure a run's final model instead of a fresh agent")
    args = parser.parse_args()
    if args.run is not None and args.overrides:
        parser.error("pass either --run or the overrides of a fresh agent, not both")
    if args.run is not None:
        model = trained_model(str(args.run))
    else:
        cfg = compose("train", args.overrides)
        validate_train(cfg)
        model = build_model(cfg, normalize(make_envs(cfg.env, cfg.algo.n_envs, seed=cfg.seed), cfg.algo))
    result = gradient_shares(model, args.steps)
    print(
        f"{int(result['minibatches'])} minibatches, medians: whole gradient norm {result['whole']:.3f}, "
        f"convolutions' {result['convolutions']:.4f} (share {result['share']:.3f}), "
        f"after clipping at {model.max_grad_norm} {result['convolutions_clipped']:.4f}"
    )


if __name__ == "__main__":
    main()
