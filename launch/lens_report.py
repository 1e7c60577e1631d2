"""``python -m launch.lens_report DIR [--pair=axis:baseline]``: the lenses over training of a sweep.

Reads ``DIR/<point>/analysis/<lens>.jsonl`` of every point (runs with ``analysis.lenses`` set, e.g.
``configs/paper/study.py:spec=lenses``) and prints, per arm and per analysed epoch, the mean ± std
over seeds of each lens's headline numbers: the fraction of exactly-zero activations per stage
(``activations``), the top Hessian eigenvalue of the active weights (``hessian``), the gradient
norm of the active weights (``gradient_flow``), and the paired per-seed difference arm − baseline
with its 95% t-interval. Writes ``DIR/lenses.md``, ``DIR/lenses.csv`` and
``DIR/plots/<number>_over_training.png`` (mean ± std per arm).
"""

from __future__ import annotations

import csv
import io
import json
import math
import pathlib

from absl import app, flags, logging

from launch.cli import fail
from launch.report import mean_std, t_interval  # also defines --pair, read here as axis:baseline

FLAGS = flags.FLAGS

HEADLINE = {"hessian": ("eigenvalue",), "gradient_flow": ("total",)}


def _numbers(lens: str, record: dict) -> dict[str, float]:
    if lens == "activations":
        return {f"zero activations {stage}": v for stage, v in record["stages"]["zero"].items()}
    return {f"{lens} {k}": record[k] for k in HEADLINE.get(lens, ()) if k in record}


def load(directory: pathlib.Path, axis: str) -> dict[tuple[str, int], dict[int, dict[str, float]]]:
    """``{(arm, seed): {epoch: {number: value}}}`` from every point's analysis files."""
    out: dict[tuple[str, int], dict[int, dict[str, float]]] = {}
    for path in sorted(directory.glob("*/analysis/*.jsonl")):
        labels = dict(part.partition("=")[::2] for part in path.parents[1].name.split(","))
        if axis not in labels or "seed" not in labels:
            continue
        run = out.setdefault((labels[axis], int(labels["seed"])), {})
        for line in path.read_text().splitlines():
            record = json.loads(line)
            run.setdefault(record["epoch"], {}).update(_numbers(path.stem, record))
    if not out:
        raise ValueError(f"{str(directory)!r} holds no analysis/<lens>.jsonl under a point with "
                         f"{axis}= and seed= in its name; run a sweep with analysis.lenses set")
    return out


def table(runs, baseline: str) -> tuple[str, list[list]]:
    """The Markdown table and its CSV rows."""
    arms = sorted({arm for arm, _ in runs}, key=lambda a: (a != baseline, a))
    epochs = sorted({e for run in runs.values() for e in run})
    numbers = list(dict.fromkeys(k for run in runs.values() for e in run.values() for k in e))
    head = ["number", "epoch", *arms, *(f"{a} − {baseline} (95% interval)" for a in arms[1:])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = []
    for number in numbers:
        for epoch in (e for e in epochs if any(number in run.get(e, {}) for run in runs.values())):
            by_arm = {a: {s: run[epoch][number] for (arm, s), run in runs.items()
                          if arm == a and number in run.get(epoch, {})} for a in arms}
            cells = []
            for a in arms:
                mean, std, n = mean_std(list(by_arm[a].values())) if by_arm[a] else (math.nan,) * 3
                spread = "" if math.isnan(std) else f" ± {std:.2g}"
                cells.append(f"{mean:.4g}{spread} (n={n})")
                rows.append([number, epoch, a, mean, std, n])
            for a in arms[1:]:
                seeds = sorted(set(by_arm[a]) & set(by_arm[baseline]))
                mean, half, _ = t_interval([by_arm[a][s] - by_arm[baseline][s] for s in seeds]) \
                    if seeds else (math.nan, math.nan, 0)
                interval = "" if math.isnan(half) else f" [{mean - half:+.3g}, {mean + half:+.3g}]"
                cells.append(f"{mean:+.3g}{interval}")
            lines.append(f"| {number} | {epoch} | " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def plot(runs, directory: pathlib.Path) -> list[pathlib.Path]:
    """One figure per number: mean ± std over seeds per arm against the epoch."""
    from sparsejax.analysis import plots
    numbers = list(dict.fromkeys(k for run in runs.values() for e in run.values() for k in e))
    written = []
    for number in numbers:
        series = {}
        for arm in sorted({a for a, _ in runs}):
            points = []
            for epoch in sorted({e for run in runs.values() for e in run}):
                values = [run[epoch][number] for (a, _), run in runs.items()
                          if a == arm and number in run.get(epoch, {})]
                if values:
                    mean, std, _ = mean_std(values)
                    points.append((epoch, mean, 0.0 if math.isnan(std) else std))
            series[arm] = points
        path = directory / "plots" / f"{number.replace(' ', '_').replace('/', '_')}_over_training.png"
        path.parent.mkdir(exist_ok=True)
        plots.over_training(series, path, xlabel="epoch", ylabel=number, title=number)
        written.append(path)
    return written


def lens_report(directory: pathlib.Path, pair: str = "variant:vanilla") -> str:
    from sparsejax import files
    axis, _, baseline = pair.partition(":")
    runs = load(directory, axis)
    if baseline not in {arm for arm, _ in runs}:
        raise ValueError(f"--pair baseline {baseline!r} is not an arm of {axis} "
                         f"({', '.join(sorted({a for a, _ in runs}))})")
    markdown, rows = table(runs, baseline)
    text = [f"# {directory.name}: lenses over training, mean ± std over seeds; paired "
            f"{axis} arm − {baseline} with its 95% t-interval", "", markdown]
    text += [f"\n![{p.stem}](plots/{p.name})" for p in plot(runs, directory)]
    out = io.StringIO()
    csv.writer(out).writerows([["number", "epoch", axis, "mean", "std", "n"], *rows])
    files.write_atomic(directory / "lenses.md", "\n".join(text) + "\n")
    files.write_atomic(directory / "lenses.csv", out.getvalue())
    return "\n".join(text)


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.FATAL)
    if len(argv) != 2 or not pathlib.Path(argv[1]).is_dir():
        fail("pass one sweep directory: python -m launch.lens_report DIR [--pair=axis:baseline]")
    try:
        print(lens_report(pathlib.Path(argv[1]), FLAGS.pair or "variant:vanilla"))
    except ValueError as e:
        fail(str(e))


if __name__ == "__main__":
    app.run(main)
