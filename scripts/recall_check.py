"""Does the memory learn delayed cue recall where a memoryless policy cannot?

Trains MemoryPPO with each chosen extractor on ``tmem/CueRecall-v0`` and prints, per model and seed,
the success rate with the state carried and with the state reset at every step (the memory ablation).
A memoryless policy's ceiling is 1 / n_cues. ``--variants`` runs several extractor settings (an
ablation) and ends with a table of mean success per setting; ``--out`` appends every row as JSON.

    python scripts/recall_check.py --models tensor_memory mlp --seeds 0 1 2 --timesteps 30000
    python scripts/recall_check.py --models tensor_memory --variants '[{}, {"memory": {"gate_init": 0.0}}]'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from stable_baselines3.common.env_util import make_vec_env

import tmem_agents.envs  # noqa: F401  (registers the tasks)
from tmem_agents import MemoryPPO
from tmem_agents.evaluation import evaluate
from tmem_agents.policies import EXTRACTORS


def run(
    model_name: str,
    seed: int,
    timesteps: int,
    delay: int,
    n_cues: int,
    episodes: int,
    extractor: dict,
    n_epochs: int = 4,
) -> dict:
    env_kwargs = {"delay": delay, "n_cues": n_cues}
    env = make_vec_env("tmem/CueRecall-v0", n_envs=8, seed=seed, env_kwargs=env_kwargs)
    model = MemoryPPO(
        "MlpPolicy",
        env,
        n_steps=64,
        batch_size=128,
        n_epochs=4,
        bptt_len=16,
        learning_rate=1e-3,
        gamma=0.99,
        ent_coef=0.01,
        seed=seed,
        policy_kwargs={"features_extractor_class": EXTRACTORS[model_name], "features_extractor_kwargs": extractor},
    )
    start = time.perf_counter()
    model.learn(timesteps)
    seconds = time.perf_counter() - start
    eval_env = make_vec_env("tmem/CueRecall-v0", n_envs=8, seed=seed + 1000, env_kwargs=env_kwargs)
    carried = evaluate(model, eval_env, episodes, deterministic=True).summary()
    ablated = evaluate(model, eval_env, episodes, deterministic=True, memory_ablation=True).summary()
    return {
        "model": model_name,
        "seed": seed,
        "timesteps": timesteps,
        "steps_per_second": timesteps / seconds,
        "success": carried["mean_is_success"],
        "success_state_reset_each_step": ablated["mean_is_success"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tensor_memory", "lstm", "mlp"], choices=list(EXTRACTORS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=30_000)
    parser.add_argument("--delay", type=int, default=8)
    parser.add_argument("--n-cues", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--n-epochs", type=int, default=4)
    parser.add_argument(
        "--variants",
        type=json.loads,
        default=[{}],
        help='a JSON list of extractor kwargs, e.g. \'[{}, {"memory": {"channels": 16}}]\'',
    )
    parser.add_argument("--out", type=Path, help="append each row as a JSON line to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = []
    for model_name in args.models:
        for variant in args.variants:
            rows = []
            for seed in args.seeds:
                row = run(
                    model_name, seed, args.timesteps, args.delay, args.n_cues, args.episodes, variant, args.n_epochs
                )
                row["extractor"] = variant
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
            table.append((model_name, variant, rows))
    print("\n| model | setting | success per seed | mean | state reset every step | steps/s |")
    print("|---|---|---|---|---|---|")
    for model_name, variant, rows in table:
        per_seed = ", ".join(f"{r['success']:.2f}" for r in rows)
        mean = sum(r["success"] for r in rows) / len(rows)
        ablated = sum(r["success_state_reset_each_step"] for r in rows) / len(rows)
        speed = sum(r["steps_per_second"] for r in rows) / len(rows)
        print(f"| {model_name} | `{json.dumps(variant)}` | {per_seed} | {mean:.2f} | {ablated:.2f} | {speed:.0f} |")


if __name__ == "__main__":
    main()
