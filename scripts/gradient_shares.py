"""How much of PPO's clipped step reaches an agent's convolutions (its image encoder's).

MemoryPPO clips each minibatch's whole gradient to norm ``max_grad_norm``. This trains a fresh agent, built from
the same Hydra overrides as ``tmem-train``, for ``--steps`` steps (or, with ``--run``, a run's final model for one
more rollout) and records, before every clipping, the norm of the whole gradient and of the convolutions' part
(every 4-D parameter: the Nature CNN's or keypoint stem's kernels). It prints the medians over the minibatches:
the whole norm, the convolutions' norm and share of it, and the convolutions' norm after clipping. Adam, the
optimizer, divides each parameter's step by its own gradient's running size, so the clipped norm is not what moves
them: it also prints the root-mean-square change per parameter over the whole training, of the convolutions and
of every other parameter, in units of the initial learning rate (a fresh agent's ``algo.lr_schedule=linear``
decays over the ``--steps`` alone; the constant rate is the one to compare).

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


def rms_change(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """Root-mean-square change per number from the tensors ``before`` to ``after`` (0 for no tensors)."""
    if not before:
        return 0.0
    squares = sum(float((a.detach() - b).double().square().sum()) for a, b in zip(after, before, strict=True))
    return (squares / sum(b.numel() for b in before)) ** 0.5


def gradient_shares(model: MemoryPPO, steps: int) -> dict[str, float]:
    """Train ``model`` ``steps`` more steps and return the medians over its minibatches of the whole gradient's
    norm, the convolutions' norm, their share, and their norm after clipping at ``model.max_grad_norm``; and the
    root-mean-square change per parameter of the convolutions and of the rest, over the ``steps``, divided by the
    learning rate at the start."""
    convolutions = [p for p in model.policy.parameters() if p.dim() == 4]
    others = [p for p in model.policy.parameters() if p.dim() != 4]
    convolutions_before = [p.detach().clone() for p in convolutions]
    others_before = [p.detach().clone() for p in others]
    rate = model.lr_schedule(1.0)
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
        "convolutions_moved": rms_change(convolutions_before, convolutions) / rate,
        "others_moved": rms_change(others_before, others) / rate,
    }


def trained_model(run_dir: str) -> MemoryPPO:
    """A run's final model with ``n_envs`` envs of its task, normalised from its saved statistics as in training
    (rewards too: :func:`tmem_agents.evaluate.eval_env`'s raw rewards would change the gradients measured), and
    its initial learning rate held constant: a decaying schedule restarted for a few more steps would reach 0
    by their update."""
    run = RunFolder(run_dir)
    run.require_config("run_dir")
    cfg = OmegaConf.load(run.config)
    model_path = run.model_path("final")
    env = normalize(make_envs(cfg.env, cfg.algo.n_envs, seed=cfg.seed), cfg.algo, normalization_path(model_path))
    return MemoryPPO.load(model_path, env=env, device="cpu", custom_objects={"learning_rate": cfg.algo.learning_rate})


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
        f"after clipping at {model.max_grad_norm} {result['convolutions_clipped']:.4f}; change per parameter "
        f"(rms, in learning rates): convolutions {result['convolutions_moved']:.2f}, the rest "
        f"{result['others_moved']:.2f}"
    )


if __name__ == "__main__":
    main()
