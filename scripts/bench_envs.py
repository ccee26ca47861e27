"""Measure the step rate of every registered tmem task on one core, with random actions.

Prints a markdown table and, with ``--write``, puts it into docs/tasks.md between the
``<!-- bench:start -->`` and ``<!-- bench:end -->`` markers.

    python scripts/bench_envs.py --seconds 3 --write
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import gymnasium as gym

from tmem_agents.envs import TASK_IDS

DOC = Path(__file__).resolve().parents[1] / "docs" / "tasks.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def pin_to_one_core() -> None:
    """Run on a single core where the platform allows it."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def steps_per_second(task_id: str, seconds: float, seed: int = 0) -> float:
    """Random-action steps per second of ``task_id`` (resets included), after a short warm-up."""
    env = gym.make(task_id)
    env.action_space.seed(seed)
    env.reset(seed=seed)

    def run(steps: int) -> None:
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()

    run(50)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(100)
        steps += 100
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def table(rates: dict[str, float], load: float) -> str:
    """Markdown table of the rates, with the machine and its load average during the run."""
    lines = ["| task | steps/s (one core) |", "|---|---:|"]
    lines += [f"| `{task_id}` | {rate:,.0f} |" for task_id, rate in rates.items()]
    lines.append("")
    lines.append(
        f"Measured with `scripts/bench_envs.py` (random actions, resets included) on "
        f"{platform.machine()} with {os.cpu_count()} cores, load average {load:.1f} during the run, "
        f"Python {platform.python_version()}, MUJOCO_GL={os.environ.get('MUJOCO_GL', '')}."
    )
    return "\n".join(lines)


def write_into_doc(text: str, doc: Path = DOC) -> None:
    """Replace the text between the bench markers of ``doc``."""
    content = doc.read_text()
    if START not in content or END not in content:
        raise ValueError(f"{doc} lacks the {START} / {END} markers that delimit the table")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main() -> None:
    """Benchmark the tasks and print (and optionally write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per task")
    parser.add_argument("--ids", nargs="*", default=list(TASK_IDS), help="task ids (default: all)")
    parser.add_argument("--write", action="store_true", help=f"write the table into {DOC}")
    args = parser.parse_args()
    pin_to_one_core()
    rates = {}
    for task_id in args.ids:
        rates[task_id] = steps_per_second(task_id, args.seconds)
        print(f"{task_id}: {rates[task_id]:,.0f} steps/s", flush=True)
    text = table(rates, os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
    print(text)
    if args.write:
        write_into_doc(text)


if __name__ == "__main__":
    main()
