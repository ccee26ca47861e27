"""Tables and learning-curve plots from a suite sweep (``scripts/run_suite.py``).

Reads ``<results>/summary.csv`` and each run's CSV log; writes ``docs/results/<task>.png`` (mean episode
return over training, one line per model, shaded min-max over seeds) and prints markdown tables: final
return (mean +- std over seeds), the return with the state reset at every step, the memory's share (the
gap), the steps each model needed to first reach 80 % of the best final return on the task, steps per
second, state bytes per env and parameters. ``--write docs/results.md`` puts the tables between the
``<!-- results -->`` markers of that file, and with ``--ablation`` the table of a
``scripts/recall_check.py --out`` file between the ``<!-- ablation -->`` markers. ``--curves`` draws the same
plot for any groups of run folders instead, one line per ``label=glob``; ``--table`` prints, for the same
groups, their evaluations by ``tmem-eval`` (each folder's ``eval.json``, or the file ``--eval-file`` names):
the return per seed, its mean and sample standard deviation, Welch's t against the first group (its two-sided p
and degrees of freedom below the table), the memory's gain and the final distance; ``--steps-to=R1,R2,...``
prints, for the same groups, the steps each seed took to first reach a training return of each ``R`` (the
logged mean over the last episodes), with Welch's t likewise. Each group's folders are taken in the order of
the numbers in their names (``s2`` before ``s10``).

    python scripts/summarize_results.py --results results --ablation results/ablation.jsonl --write docs/results.md
    python scripts/summarize_results.py --curves docs/results/long.png --title "long cue recall" \
        "Tensor Memory=results/full/write_from/long_tm_s*" "LSTM=results/full/long_recall_ablation/long_lstm_fb3_s*"
    python scripts/summarize_results.py --table "LSTM=results/full/pixel_memory/lstm500lin_s*" \
        "Tensor Memory=results/full/pixel_memory/tmrs500lin_s*"
    python scripts/summarize_results.py --steps-to=-16,-14 "LSTM=results/full/pixel_memory/lstmir500lin_s*" \
        "Tensor Memory=results/full/pixel_memory/tmigw64ir500lin_s*"
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MARKERS = ("<!-- results -->", "<!-- /results -->")
ABLATION_MARKERS = ("<!-- ablation -->", "<!-- /ablation -->")


def _curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = []
    for path in sorted((run_dir / "logs").glob("progress*.csv")):
        with open(path) as f:
            rows += [r for r in csv.DictReader(f) if r.get("rollout/ep_rew_mean")]
    steps = np.array([float(r["time/total_timesteps"]) for r in rows])
    returns = np.array([float(r["rollout/ep_rew_mean"]) for r in rows])
    return steps, returns


def _fmt(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    return f"{np.mean(values):.3g} +- {np.std(values):.2g}" if len(values) > 1 else f"{values[0]:.3g}"


def _float(value: str) -> float:
    return float(value) if value not in ("", None) else math.nan


def summarize(results: Path, plots: Path) -> str:
    with open(results / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    by_task: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_task[row["task"]][row["model"]].append(row)
    plots.mkdir(parents=True, exist_ok=True)
    lines = [
        "| task | model | seeds | final return | state reset every step | memory's share | success | "
        "steps to 80% of best | steps/s | state bytes/env | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, models in by_task.items():
        best = max(np.mean([_float(r["final_return"]) for r in runs]) for runs in models.values())
        floor = min(np.mean([_float(r["final_return"]) for r in runs]) for runs in models.values())
        threshold = floor + 0.8 * (best - floor)
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for model, runs in sorted(models.items()):
            curves = [_curve(Path(r["run_dir"])) for r in runs]
            reached = [_first_step(steps, returns, threshold) for steps, returns in curves]
            _draw(ax, model, curves)
            final = [_float(r["final_return"]) for r in runs]
            ablated = [_float(r["ablation_return"]) for r in runs]
            share = [a - b for a, b in zip(final, ablated, strict=True)]
            done = [x for x in reached if not math.isnan(x)]
            steps_to = f"{np.median(done):,.0f} ({len(done)}/{len(runs)})" if done else f"not reached (0/{len(runs)})"
            lines.append(
                f"| {task} | {model} | {len(runs)} | {_fmt(final)} | {_fmt(ablated)} | {_fmt(share)} | "
                f"{_fmt([_float(r['success']) for r in runs])} | {steps_to} | "
                f"{np.mean([_float(r['steps_per_second']) for r in runs]):.0f} | "
                f"{int(float(runs[0]['state_bytes_per_env'])):,} | {int(float(runs[0]['params'])):,} |"
            )
        _save(fig, ax, task, plots / f"{task}.png")
    return "\n".join(lines)


def _draw(ax: plt.Axes, label: str, curves: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """The mean training return of ``curves`` (one per seed) over their common steps, shaded min to max."""
    curves = [c for c in curves if len(c[0])]
    if curves:
        grid = np.linspace(0, min(c[0][-1] for c in curves), 50)
        ys = np.array([np.interp(grid, s, r) for s, r in curves])
        ax.plot(grid, ys.mean(0), label=f"{label} ({len(curves)} seeds)")
        ax.fill_between(grid, ys.min(0), ys.max(0), alpha=0.2)


def _save(fig: plt.Figure, ax: plt.Axes, title: str, path: Path) -> None:
    ax.set_title(title)
    ax.set_xlabel("timesteps")
    ax.set_ylabel("episode return (training)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _natural_order(path: Path) -> list[str | int]:
    """Sort key of a path with its numbers compared as numbers: ``run_s2`` before ``run_s10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def _run_groups(groups: list[str], holding: str) -> dict[str, list[Path]]:
    """The run folders of ``label=glob`` groups (absolute or relative to the working directory; split at the
    last ``=``; groups that repeat a label join it) that hold ``holding``, by label in their first order, each
    group's folders in natural order (``s2`` before ``s10``)."""
    runs_of: dict[str, list[Path]] = {}
    for group in groups:
        label, sep, pattern = group.rpartition("=")
        runs = sorted((Path(p) for p in glob.glob(pattern) if (Path(p) / holding).exists()), key=_natural_order)
        if not sep or not runs:
            raise SystemExit(f"{group!r}: expected label=glob matching run folders with {holding}")
        runs_of.setdefault(label, []).extend(runs)
    return runs_of


def plot_groups(groups: list[str], title: str, path: Path) -> None:
    """One line per label of ``label=glob`` groups of run folders (see :func:`_run_groups`) into ``path``."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, runs in _run_groups(groups, "logs").items():
        _draw(ax, label, [_curve(run) for run in runs])
    _save(fig, ax, title, path)


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``, by its continued fraction (modified Lentz)."""
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast below this point: use the symmetry
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)

    def nonzero(value: float) -> float:
        return value if abs(value) > 1e-300 else 1e-300

    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    c, d = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0))
    fraction = d
    for m in range(1, 300):
        for term in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 / nonzero(1.0 + term * d)
            c = nonzero(1.0 + term / c)
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return front * fraction / a


def welch_test(values: np.ndarray, reference: np.ndarray) -> tuple[float, float, float] | None:
    """Welch's t of the mean of ``values`` against that of ``reference`` (positive: higher), its degrees of
    freedom (Welch-Satterthwaite) and the two-sided p of Student's t; ``None`` where either has fewer than two
    values or both have no spread."""
    if len(values) < 2 or len(reference) < 2:
        return None
    shares = values.var(ddof=1) / len(values), reference.var(ddof=1) / len(reference)
    error = math.sqrt(sum(shares))
    if error == 0:
        return None
    t = (values.mean() - reference.mean()) / error
    dof = sum(shares) ** 2 / (shares[0] ** 2 / (len(values) - 1) + shares[1] ** 2 / (len(reference) - 1))
    return float(t), float(dof), float(_incomplete_beta(dof / 2, 0.5, dof / (dof + t * t)))


def _welch_t(values: np.ndarray, reference: np.ndarray, tests: dict[str, str], row: str) -> str:
    """:func:`welch_test`'s t to one decimal (``-`` where it has none); its p and degrees of freedom go into
    ``tests`` under ``row``."""
    test = welch_test(values, reference)
    if test is None:
        return "-"
    tests[row] = f"{row} p {test[2]:.2g} ({test[1]:.1f} df)"
    return f"{test[0]:.1f}"


def _with_tests(lines: list[str], first: str, tests: dict[str, str]) -> str:
    """A table's ``lines`` and, below it, the two-sided p of each of its Welch's t against ``first``."""
    if tests:
        lines += ["", f"Welch's t against {first}, two-sided: " + "; ".join(tests.values())]
    return "\n".join(lines)


def evaluation_table(groups: list[str], eval_file: str = "eval.json") -> str:
    """One row per label of ``label=glob`` groups of run folders evaluated by ``tmem-eval`` (``eval_file``, its
    ``output``): the return per seed (in the folders' order), mean +- sample standard deviation, Welch's t of the
    mean against the first label's (positive: higher), the memory's mean gain (where ``memory_ablation`` ran) and
    the range of final distances."""
    evals = {
        label: [json.loads((run / eval_file).read_text()) for run in runs]
        for label, runs in _run_groups(groups, eval_file).items()
    }
    returns_of = {label: np.array([r["mean_return"] for r in rows]) for label, rows in evals.items()}
    first = next(iter(returns_of))
    tests: dict[str, str] = {}
    lines = [
        "| runs | seeds | return per seed | return | Welch's t | memory's gain | final distance |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, rows in evals.items():
        returns = returns_of[label]
        mean = f"{returns.mean():.2f}" + (f" +- {returns.std(ddof=1):.2f}" if len(returns) > 1 else "")
        t = _welch_t(returns, returns_of[first], tests, label) if label != first else "-"
        distances = [r["mean_final_distance"] for r in rows if "mean_final_distance" in r]
        gains = [r["memory_gain"] for r in rows if "memory_gain" in r]
        lines.append(
            f"| {label} | {len(rows)} | {', '.join(f'{r:.2f}' for r in returns)} | {mean} | {t} | "
            + (f"{np.mean(gains):.2f} | " if gains else "- | ")
            + (f"{min(distances):.3f}-{max(distances):.3f} |" if distances else "- |")
        )
    return _with_tests(lines, first, tests)


def _first_step(steps: np.ndarray, returns: np.ndarray, target: float) -> float:
    """The first of ``steps`` whose return is at least ``target``; NaN where none is."""
    hit = np.flatnonzero(returns >= target)
    return float(steps[hit[0]]) if len(hit) else math.nan


def steps_to_table(groups: list[str], targets: list[float]) -> str:
    """One row per target training return and label of ``label=glob`` groups of run folders: the steps each seed
    took to first log a mean training return of at least the target (in the folders' order, in thousands; ``-``
    where it never did), their mean over the seeds that reached it, and Welch's t of that mean against the first
    label's (negative: sooner)."""
    curves = {label: [_curve(run) for run in runs] for label, runs in _run_groups(groups, "logs").items()}
    first = next(iter(curves))
    tests: dict[str, str] = {}
    lines = [
        "| training return | runs | seeds reaching it | steps per seed (k) | mean steps (k) | Welch's t |",
        "|---|---|---|---|---|---|",
    ]
    for target in targets:
        reached_of = {
            label: [_first_step(steps, returns, target) for steps, returns in runs] for label, runs in curves.items()
        }
        done_of = {label: np.array([s for s in reached if not math.isnan(s)]) for label, reached in reached_of.items()}
        for label, reached in reached_of.items():
            done = done_of[label]
            per_seed = ", ".join("-" if math.isnan(s) else f"{s / 1000:.0f}" for s in reached)
            mean = f"{done.mean() / 1000:.0f}" if len(done) else "-"
            t = _welch_t(done, done_of[first], tests, f"{target:g} {label}") if label != first else "-"
            lines.append(f"| {target:g} | {label} | {len(done)}/{len(reached)} | {per_seed} | {mean} | {t} |")
    return _with_tests(lines, first, tests)


def ablation_table(path: Path) -> str:
    """Mean success per extractor setting from ``scripts/recall_check.py --out`` rows."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        groups[json.dumps(row["extractor"], sort_keys=True)].append(row)
    lines = [
        "| setting | success per seed | mean success | state reset every step | steps/s |",
        "|---|---|---|---|---|",
    ]
    for setting, rows in groups.items():
        per_seed = ", ".join(f"{r['success']:.2f}" for r in sorted(rows, key=lambda r: r["seed"]))
        lines.append(
            f"| `{setting}` | {per_seed} | {np.mean([r['success'] for r in rows]):.2f} | "
            f"{np.mean([r['success_state_reset_each_step'] for r in rows]):.2f} | "
            f"{np.mean([r['steps_per_second'] for r in rows]):.0f} |"
        )
    return "\n".join(lines)


def _replace(text: str, markers: tuple[str, str], table: str) -> str:
    pattern = re.compile(re.escape(markers[0]) + ".*?" + re.escape(markers[1]), re.S)
    return pattern.sub(lambda _: f"{markers[0]}\n{table}\n{markers[1]}", text)


def _returns(text: str) -> list[float]:
    """``--steps-to``'s comma-separated training returns."""
    try:
        return [float(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected returns separated by commas (-16,-14), got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--plots", type=Path, default=Path("docs/results"))
    parser.add_argument("--ablation", type=Path, help="JSON lines from scripts/recall_check.py --out")
    parser.add_argument("--write", type=Path, help="markdown file whose results markers receive the tables")
    parser.add_argument("--curves", type=Path, help="plot the groups into this file instead of summarizing")
    parser.add_argument("--title", default="", help="title of the --curves plot")
    parser.add_argument("--table", action="store_true", help="print the groups' evaluations instead")
    parser.add_argument("--eval-file", default="eval.json", help="with --table: the evaluation file of each run")
    parser.add_argument(
        "--steps-to",
        type=_returns,
        metavar="R1,R2,...",
        help="print the steps the groups' seeds took to first reach each training return instead (--steps-to=-16,-14)",
    )
    parser.add_argument("groups", nargs="*", help="with --curves, --table or --steps-to: label=glob of run folders")
    args = parser.parse_args()
    if (args.table or args.steps_to or args.curves) and not args.groups:
        parser.error("--curves, --table and --steps-to need label=glob groups of run folders")
    if args.table:
        print(evaluation_table(args.groups, args.eval_file))
        return
    if args.steps_to:
        print(steps_to_table(args.groups, args.steps_to))
        return
    if args.curves:
        plot_groups(args.groups, args.title, args.curves)
        return
    table = summarize(args.results, args.plots)
    print(table)
    ablation = ablation_table(args.ablation) if args.ablation else None
    if ablation:
        print("\n" + ablation)
    if args.write:
        text = _replace(args.write.read_text(), MARKERS, table)
        args.write.write_text(_replace(text, ABLATION_MARKERS, ablation) if ablation else text)


if __name__ == "__main__":
    main()
