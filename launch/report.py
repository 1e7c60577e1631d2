"""``python -m launch.report DIR [--rows=k1,k2] [--cols=key] [--allow=k] [--pair=axis:baseline]``.

Reads every finished run under ``DIR`` (a sweep's points, a comparison's variants, any run with a
``summary.json``) and prints, as the papers do, the mean ± std over seeds (sample std, n given) of the
test accuracy at the best validation epoch, in a table of ``--rows`` × ``--cols`` (default: columns
the sparsity if it varies, rows the other axes). Arms of a named axis (``--pair``, default the axis
``variant`` or ``arm`` if the sweep has one) are compared paired: per seed, arm − baseline, with the
mean difference and its 95% t-interval. Writes ``DIR/report.md``, ``DIR/report.csv`` (one line per
cell), ``DIR/runs.csv`` (one line per run) and ``DIR/plots/accuracy_vs_sparsity_<method>.png`` (one line per other setting, error bars ±
std).

A cell mixes only runs whose configs are identical but for the seed; runs that differ in another key
are refused with one line naming the key, unless ``--allow`` lists it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pathlib
from typing import Any

import numpy as np
from absl import app, flags, logging

from launch.cli import fail

FLAGS = flags.FLAGS
flags.DEFINE_list("rows", None, "Keys that label the rows (config keys or the sweep's axes).")
flags.DEFINE_list("cols", None, "Keys that label the columns (default: mask.sparsity if it varies).")
flags.DEFINE_list("allow", [], "Config keys runs of one cell may differ in (besides the seed).")
flags.DEFINE_string("pair", None, "axis[:baseline]: the arms compared paired per seed (default: the "
                    "axis variant or arm, baseline vanilla or its first arm); 'none' turns it off.")

ALWAYS_ALLOWED = ("seed", "name")  # every point's name differs; the seed is what a cell averages
METRIC = "test_accuracy"  # at the best validation epoch (final_test_accuracy: at the end)
SPARSITY = "mask.sparsity"
PAIR_AXES = ("variant", "arm")
LOTTERY_FILES = ("mask.file", "init.variables_file")  # set by each IMP round to its own files


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = tuple(v) if isinstance(v, list) else v
    return out


def load_runs(directory: pathlib.Path) -> list[dict[str, Any]]:
    """One record per finished run under ``directory``: its flattened config, its point's axes
    (``point.*`` keys, from the sweep's directory names) and its summary's accuracies."""
    runs = []
    for path in sorted(directory.rglob("summary.json")):
        summary = json.loads(path.read_text())
        if "config" not in summary or summary.get(METRIC) is None:
            continue  # not a training run's summary (e.g. a lottery's), or one without a validation
        record = flatten(summary["config"])
        record["_config_keys"] = frozenset(record)
        rel = path.parent.relative_to(directory)
        labels_win = _is_round(rel.name)
        if labels_win:  # a lottery's round: the point is its parent; only the final ticket counts
            if int(rel.name[len("round_"):]) != record.get("lottery.rounds"):
                continue  # the lottery has not reached its last round yet
            rel = rel.parent
            for key in LOTTERY_FILES:  # the ticket's own files, a different path per point
                record.pop(key, None)
        if "=" in rel.name:  # a sweep point: "key=value,...,seed=s"
            record.update({k: v for k, _, v in (part.partition("=") for part in rel.name.split(","))
                           if k not in record or (labels_win and str(record[k]) != v)})
        elif rel.parts:  # a comparison's variant
            record.setdefault("variant", rel.parts[-1])
        record["run"] = str(rel)
        record[METRIC] = summary[METRIC]
        record["final_test_accuracy"] = summary["final_test_accuracy"]
        record["sparsity"] = summary["sparsity"]
        runs.append(record)
    if not runs:
        raise ValueError(f"{str(directory)!r} holds no finished run (no summary.json with a test "
                         "accuracy under it); run python -m launch.sweep first, or wait for it")
    return runs


def _is_round(name: str) -> bool:
    return name.startswith("round_") and name[len("round_"):].isdigit()


def varying(runs: list[dict[str, Any]]) -> list[str]:
    """Keys whose value differs between runs, in first-seen order."""
    keys = list(dict.fromkeys(k for r in runs for k in r))
    skip = {"run", "_config_keys", METRIC, "final_test_accuracy", "sparsity", *ALWAYS_ALLOWED}
    return [k for k in keys if k not in skip and len({repr(r.get(k)) for r in runs}) > 1]


def layout(runs, rows: list[str] | None, cols: list[str] | None, axes: list[str] | None = None
           ) -> tuple[list[str], list[str]]:
    """The row and column keys: given, or the sweep's axes (``sweep.json``; else the varying keys,
    named axes first, without those that a named axis sets), columns the sparsity if it varies."""
    keys = varying(runs)
    if axes is None:
        config_keys = {k for r in runs for k in r if k in r.get("_config_keys", ())}
        named = [k for k in keys if k not in config_keys]
        axes = named + [k for k in keys if k in config_keys]
    axes = [k for k in axes if k in keys]
    if cols is None:
        cols = [SPARSITY] if SPARSITY in keys else []
    if rows is None:
        rows = []
        for key in (k for k in axes if k not in cols):
            if not _constant_within(runs, rows + cols, key):
                rows.append(key)
    for key in rows + cols:
        if all(key not in r for r in runs):
            raise ValueError(f"--rows/--cols key {key!r} is in no run; the runs vary in "
                             f"{', '.join(keys) or 'nothing but the seed'}")
    return rows, cols


def _constant_within(runs, keys: list[str], key: str) -> bool:
    """Whether ``key`` is set by ``keys`` (one value per combination of theirs), e.g. a key that a
    named arm sets; then it needs no row of its own."""
    seen: dict[tuple, set[str]] = {}
    for r in runs:
        seen.setdefault(tuple(repr(r.get(k)) for k in keys), set()).add(repr(r.get(key)))
    return bool(keys) and all(len(v) == 1 for v in seen.values())


def cells(runs, rows: list[str], cols: list[str], allow: list[str]) -> dict[tuple, list[dict]]:
    """Runs grouped by their row and column values; refuses a cell of runs of different configs."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(r.get(k) for k in rows + cols), []).append(r)
    free = set(rows + cols + list(allow) + list(ALWAYS_ALLOWED))
    for key, members in groups.items():
        differ = [k for k in varying(members) if k not in free]
        if differ:
            label = ", ".join(f"{k}={v}" for k, v in zip(rows + cols, key)) or "the one cell"
            raise ValueError(f"cell {label} mixes runs that differ in {', '.join(differ[:4])}; add "
                             "it to --rows or --cols, or pass --allow=" + ",".join(differ[:4]))
        seeds = [m.get("seed") for m in members]
        if len(set(seeds)) < len(seeds):
            raise ValueError(f"cell {key} holds two runs of seed {seeds[0]} "
                             f"({members[0]['run']}, ...); report one sweep directory at a time")
    return groups


def mean_std(values: list[float]) -> tuple[float, float, int]:
    x = np.asarray(values, np.float64)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else float("nan"), len(x)


def t_interval(differences: list[float]) -> tuple[float, float, int]:
    """Mean of paired differences and the half-width of its 95% t-interval (nan for n < 2)."""
    from scipy import stats
    x = np.asarray(differences, np.float64)
    if len(x) < 2:
        return float(x.mean()), float("nan"), len(x)
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))), len(x)


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _percent(mean: float, spread: float, n: int, sign: bool = False) -> str:
    spread_text = "" if math.isnan(spread) else f" ± {100 * spread:.2f}"
    return f"{100 * mean:{'+' if sign else ''}.2f}{spread_text} (n={n})"


def table(groups, rows: list[str], cols: list[str]) -> str:
    """Markdown: rows × columns of mean ± std (n) of the test accuracy, in %."""
    row_keys = sorted({k[:len(rows)] for k in groups}, key=_order)
    col_keys = sorted({k[len(rows):] for k in groups}, key=_order)
    head = [" / ".join(rows) or "runs"] + [", ".join(f"{c}={_fmt(v)}" for c, v in zip(cols, ck))
                                          or "test accuracy (%)" for ck in col_keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rk in row_keys:
        cells_text = []
        for ck in col_keys:
            members = groups.get(rk + ck)
            cells_text.append(_percent(*mean_std([m[METRIC] for m in members])) if members else "")
        lines.append("| " + " / ".join(_fmt(v) for v in rk) + " | " + " | ".join(cells_text) + " |")
    return "\n".join(lines)


def _order(key: tuple) -> tuple:
    return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in key)


def paired(runs, rows: list[str], cols: list[str], pair: str, baseline: str) -> list[dict]:
    """Per cell and arm: the per-seed differences arm − baseline and their 95% interval."""
    others = [k for k in rows + cols if k != pair]
    by_cell: dict[tuple, dict[Any, dict[Any, float]]] = {}
    for r in runs:
        by_cell.setdefault(tuple(r.get(k) for k in others), {}).setdefault(
            r.get(pair), {})[r.get("seed")] = r[METRIC]
    out = []
    for cell, arms in sorted(by_cell.items(), key=lambda kv: _order(kv[0])):
        base = arms.get(baseline, {})
        for arm, accs in arms.items():
            if arm == baseline:
                continue
            seeds = sorted(set(accs) & set(base))
            if seeds:
                mean, half, n = t_interval([accs[s] - base[s] for s in seeds])
                out.append({**dict(zip(others, cell)), "arm": arm, "baseline": baseline,
                            "mean_difference": mean, "ci95": half, "n": n,
                            "arm_better": sum(accs[s] > base[s] for s in seeds)})
    return out


def paired_table(diffs: list[dict], others: list[str]) -> str:
    head = [*others, "arm − baseline (%)", "95% interval (%)", "seeds arm better"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in diffs:
        lo, hi = d["mean_difference"] - d["ci95"], d["mean_difference"] + d["ci95"]
        interval = "" if math.isnan(d["ci95"]) else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"
        lines.append("| " + " | ".join([*(_fmt(d[k]) for k in others),
                                        f"{d['arm']} − {d['baseline']}: {100 * d['mean_difference']:+.2f}",
                                        interval, f"{d['arm_better']}/{d['n']}"]) + " |")
    return "\n".join(lines)


def choose_pair(runs, keys: list[str], spec: str | None) -> tuple[str, str] | None:
    """The paired axis and its baseline arm (None: no paired comparison)."""
    if spec == "none":
        return None
    axis, _, baseline = (spec or "").partition(":")
    if not axis:
        axis = next((a for a in PAIR_AXES if a in keys), "")
        if not axis:
            return None
    values = list(dict.fromkeys(r.get(axis) for r in runs))
    if axis not in keys or len(values) < 2:
        raise ValueError(f"--pair axis {axis!r} is not a row or column key with two or more "
                         f"values; the table's keys are {', '.join(keys) or 'none'}")
    if not baseline:
        baseline = "vanilla" if "vanilla" in values else values[0]
    if baseline not in values:
        raise ValueError(f"--pair baseline {baseline!r} is not a value of {axis} "
                         f"({', '.join(map(str, values))})")
    return axis, baseline


def csv_text(groups, rows: list[str], cols: list[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*rows, *cols, "mean_test_accuracy", "std", "n", "min", "max",
                     "mean_final_test_accuracy", "seeds"])
    for key, members in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        acc = [m[METRIC] for m in members]
        mean, std, n = mean_std(acc)
        writer.writerow([*key, f"{mean:.6f}", f"{std:.6f}", n, f"{min(acc):.6f}", f"{max(acc):.6f}",
                         f"{np.mean([m['final_test_accuracy'] for m in members]):.6f}",
                         " ".join(str(m.get("seed")) for m in members)])
    return out.getvalue()


def runs_csv(groups, rows: list[str], cols: list[str]) -> str:
    """One line per run: its cell, seed and accuracies (for analyses the tables do not make)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*rows, *cols, "seed", "test_accuracy", "final_test_accuracy", "sparsity", "run"])
    for key, members in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        for m in sorted(members, key=lambda m: str(m.get("seed"))):
            writer.writerow([*key, m.get("seed"), f"{m[METRIC]:.6f}",
                             f"{m['final_test_accuracy']:.6f}", f"{m['sparsity']:.6f}", m["run"]])
    return out.getvalue()


def plot(groups, rows: list[str], cols: list[str], directory: pathlib.Path) -> list[pathlib.Path]:
    """Accuracy vs sparsity, one figure per mask method (one line per other row setting)."""
    if cols != [SPARSITY]:
        return []
    from sparsejax.analysis import plots
    method_key = "mask.method" if "mask.method" in rows else None
    figures: dict[Any, dict[tuple, list[tuple[float, float, float]]]] = {}
    for key, members in groups.items():
        row = dict(zip(rows, key[:len(rows)]))
        method = row.pop(method_key, None) if method_key else members[0].get("mask.method")
        mean, std, _ = mean_std([m[METRIC] for m in members])
        figures.setdefault(method, {}).setdefault(tuple(row.items()), []).append(
            (key[-1], mean, 0.0 if math.isnan(std) else std))
    written = []
    for method, lines in figures.items():
        path = directory / "plots" / f"accuracy_vs_sparsity_{method}.png"
        path.parent.mkdir(exist_ok=True)
        series = {", ".join(f"{k}={_fmt(v)}" for k, v in label) or str(method): sorted(points)
                  for label, points in lines.items()}
        plots.over_training(series, path, xlabel="sparsity", ylabel="test accuracy (best validation)",
                            title=f"{method} masks")
        written.append(path)
    return written


def report(directory: pathlib.Path, rows=None, cols=None, allow=(), pair=None) -> str:
    """Writes ``report.md``, ``report.csv`` (one line per cell), ``runs.csv`` (one per run) and the
    plots; returns the Markdown."""
    from sparsejax import files
    runs = load_runs(directory)
    sweep = directory / "sweep.json"
    axes = json.loads(sweep.read_text())["axes"] if sweep.exists() else None
    rows, cols = layout(runs, rows, cols, axes)
    groups = cells(runs, rows, cols, list(allow))
    text = [f"# {directory.name}: test accuracy (%) at the best validation epoch, mean ± std over "
            f"seeds", "", table(groups, rows, cols)]
    chosen = choose_pair(runs, rows + cols, pair)
    if chosen:
        diffs = paired(runs, rows, cols, *chosen)
        text += ["", f"Paired by seed (same mask and initialization), {chosen[0]}: arm − "
                 f"{chosen[1]}, mean and 95% t-interval", "",
                 paired_table(diffs, [k for k in rows + cols if k != chosen[0]])]
    text += [f"\n![{path.stem}](plots/{path.name})" for path in plot(groups, rows, cols, directory)]
    markdown = "\n".join(text) + "\n"
    files.write_atomic(directory / "report.md", markdown)
    files.write_atomic(directory / "report.csv", csv_text(groups, rows, cols))
    files.write_atomic(directory / "runs.csv", runs_csv(groups, rows, cols))
    return markdown


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.FATAL)
    if len(argv) != 2:
        fail("pass one directory: python -m launch.report DIR [--rows=k --cols=k]")
    directory = pathlib.Path(argv[1])
    if not directory.is_dir():
        fail(f"{str(directory)!r} is not a directory; pass a sweep's --workdir")
    try:
        print(report(directory, FLAGS.rows, FLAGS.cols, FLAGS.allow, FLAGS.pair))
    except ValueError as e:
        fail(str(e))


if __name__ == "__main__":
    app.run(main)
