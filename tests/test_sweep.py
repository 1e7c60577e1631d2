"""``launch.sweep`` and ``launch.report``: grids × seeds, skip and resume, mean ± std, paired
differences, the paper specs of ``configs/paper/``, and their bad input."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest
from scipy import stats

from launch import report, sweep
from sparsejax.train import build

REPO = pathlib.Path(__file__).resolve().parents[1]
PAPER = {name: importlib.import_module(f"configs.paper.{name}")
         for name in ("tost", "lottery", "ggr", "study")}
TEACHER = "teacher=TEACHER"  # fig9's distillation arm needs one: a file the test writes


def spec_arg(name: str, spec: str, runlocal: bool) -> str:
    return ",".join([f"spec={spec}", *(["runlocal"] if runlocal and name != "study" else []),
                     *([TEACHER] if spec == "fig9" else [])])


SPEC_CASES = [pytest.param(name, spec_arg(name, spec, local), id=f"{name}-{spec}-{local and 'local'}")
              for name, module in PAPER.items() for spec in module.SPECS
              for local in ((True,) if name == "study" else (False, True))]  # the study is digits


def env() -> dict[str, str]:
    e = dict(os.environ, JAX_PLATFORMS="cpu")
    e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    return e


def run_module(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


# --- the grid ----------------------------------------------------------------------------------------

def quickstart() -> ml_collections.ConfigDict:
    return importlib.import_module("configs.quickstart").get_config()


def test_compare_config_sweeps_its_variants_times_seeds_with_stable_names():
    found = sweep.points(quickstart(), {}, ["mask.sparsity=0.9,0.95"], (3, 7))
    assert [p.name for p in found] == [
        f"variant={v},mask.sparsity={s},seed={seed}"
        for v in ("tost", "vanilla") for s in (0.9, 0.95) for seed in (3, 7)]  # ConfigDict order
    tost = sweep.point_config(quickstart(), found[3])
    assert (tost.mode, tost.seed, tost.mask.sparsity) == ("train", 7, 0.95)
    assert tost.tost.ghost_swish and tost.tost.label_smoothing == 0.1
    vanilla = sweep.point_config(quickstart(), found[4])
    assert not vanilla.tost.ghost_swish and vanilla.tost.label_smoothing == 0.0
    picked = sweep.points(quickstart(), {}, ["variant=tost"], (0,))
    assert [p.name for p in picked] == ["variant=tost,seed=0"]


def test_spec_grids_share_points_and_cli_picks_among_spec_values():
    spec = {"grids": [{"mask.sparsity": [0.9, 0.95]}, {"mask.sparsity": [0.95, 0.99]}]}
    config = importlib.import_module("configs.quickstart").get_config("variant=vanilla")
    names = [p.name for p in sweep.points(config, spec, [], (0,))]
    assert names == [f"mask.sparsity={s},seed=0" for s in (0.9, 0.95, 0.99)]
    picked = sweep.points(config, spec, ["mask.sparsity=0.99"], (0,))
    assert [p.name for p in picked] == ["mask.sparsity=0.99,seed=0"]
    with pytest.raises(ValueError, match="0.5 is not a value of mask.sparsity"):
        sweep.points(config, spec, ["mask.sparsity=0.5"], (0,))


@pytest.mark.parametrize("grid, match", [
    ("mask.sparsty=0.9", "mask.sparsity"),  # the close match is named
    ("mask.sparsity=dense", "'dense' for mask.sparsity is not a float"),
    ("num_epochs=1.5", "'1.5' for num_epochs is not a int"),
    ("variant=fancy", "variant has no arm 'fancy'"),
    ("seed=1,2", "pass --seeds"),
    ("mask.sparsity=", "has no values"),
])
def test_bad_grid_raises_naming_it(grid, match):
    with pytest.raises(ValueError, match=match):
        sweep.points(quickstart(), {}, [grid], (0,))


def test_bad_grid_on_the_command_line_is_one_line_and_creates_nothing(tmp_path):
    workdir = tmp_path / "w"
    line = one_line_error(run_module("launch.sweep", "--config=configs/quickstart.py",
                                     "--grid=mask.sparsty=0.9", f"--workdir={workdir}"))
    assert "mask.sparsty" in line and "mask.sparsity" in line
    assert not workdir.exists()
    line = one_line_error(run_module("launch.sweep", "--config=configs/quickstart.py",
                                     "--seeds=two", f"--workdir={workdir}"))
    assert "--seeds" in line and not workdir.exists()


# --- the paper specs ---------------------------------------------------------------------------------

def write_teacher(arg: str, tmp_path: pathlib.Path) -> str:
    """``arg`` with a teacher file for its config's model and dataset (zeros: only shapes count)."""
    import jax
    import jax.numpy as jnp
    from sparsejax import data, models
    from sparsejax.train import workdir
    path = tmp_path / "final_variables.npz"
    config = PAPER["lottery"].get_config(arg.replace("TEACHER", str(path)))
    net = models.build(config.model.name, data.NUM_CLASSES[config.data.name])
    like = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros(
        (1, 8, 8, data.CHANNELS[config.data.name])), train=False))
    workdir.save_variables(path, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), like))
    return arg.replace("TEACHER", str(path))


@pytest.mark.parametrize("name, arg", SPEC_CASES)
def test_spec_builds_every_point(name, arg, tmp_path):
    """Every point of every table/figure spec, full scale and runlocal, passes the up-front check;
    the runlocal variant (and the study) runs on digits."""
    module = PAPER[name]
    if "TEACHER" in arg:
        arg = write_teacher(arg, tmp_path)
    config, spec = module.get_config(arg), module.get_sweep(arg)
    found = sweep.points(config, spec, [], tuple(spec["seeds"]))
    assert found and len({p.name for p in found}) == len(found)
    for point in found:
        c = sweep.point_config(config, point)
        build.check(c)
        assert (c.data.name == "digits") == ("runlocal" in arg or name == "study")
    if "runlocal" in arg:
        full = module.get_sweep(arg.replace(",runlocal", ""))
        full_axes = {a for g in full.get("grids", [full.get("grid")]) for a in g}
        local_axes = {a for g in spec.get("grids", [spec.get("grid")]) for a in g}
        assert local_axes <= full_axes  # only data.name / model.name are dropped


def test_lottery_points_reach_their_sparsity_exactly():
    module = PAPER["lottery"]
    config, spec = module.get_config("spec=tableA3"), module.get_sweep("spec=tableA3")
    for point in sweep.points(config, spec, [], (42,)):
        c = sweep.point_config(config, point)
        assert c.mode == "lottery"
        assert 1 - (1 - c.lottery.fraction) ** c.lottery.rounds == pytest.approx(
            point.values["mask.sparsity"], abs=1e-12)


def shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """One epoch, no warm-up, DST from the start: the spec's program at the least cost."""
    config.num_epochs, config.optimizer.decay_epochs = 1, (1,)
    config.optimizer.warmup_epochs, config.dst.start_epoch = 0, 0
    config.checkpoint_every_epochs = 1
    config.analysis.epochs = tuple(e for e in config.analysis.epochs if e <= 1)
    return config


@pytest.mark.slow
@pytest.mark.parametrize("name, arg", [c for c in SPEC_CASES if "local" in c.id])
def test_spec_runlocal_trains_its_first_point(tmp_path, name, arg):
    """The first point of each spec's runlocal grid trains (one epoch, one IMP round)."""
    module = PAPER[name]
    if "TEACHER" in arg:
        arg = write_teacher(arg, tmp_path)
    config, spec = shrink(module.get_config(arg)), module.get_sweep(arg)
    point = sweep.points(config, spec, [], tuple(spec["seeds"]))[0]
    if "lottery.rounds" in point.overrides:
        point = dataclasses.replace(point, overrides={**point.overrides, "lottery.rounds": 1})
    assert sweep.run(config, [(0, point)], 1, tmp_path / "sweep") == []
    finished = json.loads((tmp_path / "sweep" / point.name / sweep.FINISHED).read_text())
    assert 0.0 <= finished["test_accuracy"] <= 1.0


# --- the report --------------------------------------------------------------------------------------

def fake_run(directory: pathlib.Path, name: str, accuracy: float, **config) -> None:
    """A finished run as ``train_and_evaluate`` leaves it (summary.json with its config)."""
    c = {"seed": config.pop("seed"), "name": f"x/{name}",
         "mask": {"method": config.pop("method", "random"), "sparsity": config.pop("sparsity", 0.9)},
         "tost": {"label_smoothing": config.pop("ls", 0.0)}, **config}
    (directory / name).mkdir(parents=True, exist_ok=True)
    (directory / name / "summary.json").write_text(json.dumps(
        {"config": c, "test_accuracy": accuracy, "final_test_accuracy": accuracy - 0.01,
         "sparsity": c["mask"]["sparsity"]}))


ACC = {("vanilla", 0.9): [0.90, 0.80, 0.85], ("tost", 0.9): [0.93, 0.81, 0.85],
       ("vanilla", 0.95): [0.70, 0.75, 0.72], ("tost", 0.95): [0.60, 0.70, 0.71]}


@pytest.fixture
def swept(tmp_path) -> pathlib.Path:
    for (variant, sparsity), accs in ACC.items():
        for seed, acc in enumerate(accs):
            fake_run(tmp_path, f"variant={variant},mask.sparsity={sparsity},seed={seed}", acc,
                     seed=seed, sparsity=sparsity, ls=0.1 if variant == "tost" else 0.0)
    return tmp_path


def test_report_prints_mean_std_and_paired_intervals_as_computed_by_hand(swept):
    text = report.report(swept)
    assert "| variant | mask.sparsity=0.9 | mask.sparsity=0.95 |" in text
    for (variant, sparsity), accs in ACC.items():
        mean, std = 100 * np.mean(accs), 100 * np.std(accs, ddof=1)
        assert f"{mean:.2f} ± {std:.2f} (n=3)" in text
        if variant == "tost":
            d = np.subtract(accs, ACC["vanilla", sparsity])
            half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
            assert (f"| {sparsity:g} | tost − vanilla: {100 * d.mean():+.2f} | "
                    f"[{100 * (d.mean() - half):+.2f}, {100 * (d.mean() + half):+.2f}] | "
                    f"{int((d > 0).sum())}/3 |") in text
    assert (swept / "report.md").read_text() == text
    rows = (swept / "report.csv").read_text().splitlines()
    assert rows[0].startswith("variant,mask.sparsity,mean_test_accuracy,std,n")
    assert len(rows) == 5
    runs = (swept / "runs.csv").read_text().splitlines()
    assert runs[0] == "variant,mask.sparsity,seed,test_accuracy,final_test_accuracy,sparsity,run"
    assert "tost,0.9,1,0.810000,0.800000,0.900000,\"variant=tost,mask.sparsity=0.9,seed=1\"" in runs
    assert len(runs) == 13
    assert (swept / "plots" / "accuracy_vs_sparsity_random.png").stat().st_size > 0


def test_report_counts_only_a_lotterys_final_round(tmp_path):
    for seed in (0, 1):
        point = tmp_path / f"mask.method=lth,mask.sparsity=0.36,seed={seed}"
        for r, acc in enumerate([0.5, 0.6, [0.7, 0.8][seed]]):
            fake_run(point, f"round_{r}", acc, seed=seed, method="file", sparsity=0.36,
                     lottery={"rounds": 2}, init={"variables_file": f"{point}/round_0/rewind.npz"})
    unfinished = tmp_path / "mask.method=lth,mask.sparsity=0.36,seed=2"
    fake_run(unfinished, "round_0", 0.4, seed=2, method="file", sparsity=0.36, lottery={"rounds": 2},
             init={"variables_file": ""})
    runs = report.load_runs(tmp_path)
    assert sorted((r["seed"], r["test_accuracy"]) for r in runs) == [(0, 0.7), (1, 0.8)]
    assert {r["mask.method"] for r in runs} == {"lth"}
    assert "75.00 ± 7.07 (n=2)" in report.report(tmp_path)


def test_report_refuses_a_cell_of_different_configs_unless_allowed(swept):
    (swept / "sweep.json").write_text(json.dumps({"axes": ["variant", "mask.sparsity"]}))
    (swept / "variant=tost,mask.sparsity=0.9,seed=2" / "summary.json").unlink()
    fake_run(swept, "variant=tost,mask.sparsity=0.9,seed=2", 0.85, seed=2, sparsity=0.9, ls=0.2)
    with pytest.raises(ValueError, match="mixes runs that differ in tost.label_smoothing"):
        report.report(swept)
    assert "(n=3)" in report.report(swept, allow=["tost.label_smoothing"])


def test_report_of_no_finished_run_is_one_line(tmp_path):
    (tmp_path / "variant=tost,seed=0").mkdir()
    line = one_line_error(run_module("launch.report", str(tmp_path)))
    assert "holds no finished run" in line
    line = one_line_error(run_module("launch.report", str(tmp_path / "missing")))
    assert "is not a directory" in line


# --- end to end ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sweep_killed_resumes_without_redoing_finished_points_then_reports(tmp_path):
    """2 arms × 2 seeds on digits: killed while its second point trains, the relaunch skips the
    first point (its files untouched), trains the rest, and the report prints mean ± std."""
    workdir = tmp_path / "sweep"
    args = ["launch.sweep", "--config=configs/quickstart.py:epochs=4", "--seeds=2",
            f"--workdir={workdir}", "--config.batch_size=64"]
    env_cache = dict(env(), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env_cache,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = proc.stdout.readline()
    assert first.startswith("[1/4] variant=tost,seed=0: test accuracy"), first
    time.sleep(3)  # into the second point
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = workdir / "variant=tost,seed=0" / sweep.FINISHED
    before = {p: p.stat().st_mtime_ns for p in finished.parent.rglob("*") if p.is_file()}
    assert not (workdir / "variant=tost,seed=1" / sweep.FINISHED).exists()

    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env_cache,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "[1/4] variant=tost,seed=0: finished before, skipped"
    assert [line.split(":")[0] for line in lines[1:4]] == [
        "[2/4] variant=tost,seed=1", "[3/4] variant=vanilla,seed=0", "[4/4] variant=vanilla,seed=1"]
    assert {p: p.stat().st_mtime_ns for p in finished.parent.rglob("*") if p.is_file()} == before
    assert "4 of 4 points finished" in lines[-1]
    sweep_json = json.loads((workdir / "sweep.json").read_text())
    assert sweep_json["axes"] == ["variant"] and sweep_json["seeds"] == [0, 1]

    printed = run_module("launch.report", str(workdir))
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert printed.stdout.count("(n=2)") == 2 and "tost − vanilla" in printed.stdout


# --- the lenses over training --------------------------------------------------------------------------

def test_lens_report_averages_each_number_over_seeds_and_pairs_the_arms(tmp_path):
    from launch import lens_report
    values = {("vanilla", 0): 10.0, ("vanilla", 1): 14.0, ("tost", 0): 7.0, ("tost", 1): 8.0}
    for (arm, seed), eigenvalue in values.items():
        analysis = tmp_path / f"variant={arm},seed={seed}" / "analysis"
        analysis.mkdir(parents=True)
        (analysis / "hessian.jsonl").write_text("\n".join(json.dumps(
            {"step": 10 * e, "epoch": e, "eigenvalue": eigenvalue + e}) for e in (0, 5)) + "\n")
        (analysis / "activations.jsonl").write_text(json.dumps(
            {"step": 0, "epoch": 0, "stages": {"zero": {"stem": 0.5 + seed / 4}}}) + "\n")
    text = lens_report.lens_report(tmp_path)
    # vanilla 10, 14: mean 12, std 2.83; tost 7, 8: 7.5 ± 0.71; differences −3, −6: −4.5 ± t·2.12/√2
    half = stats.t.ppf(0.975, 1) * np.std([-3.0, -6.0], ddof=1) / math.sqrt(2)
    assert (f"| hessian eigenvalue | 5 | 17 ± 2.8 (n=2) | 12.5 ± 0.71 (n=2) | "
            f"-4.5 [{-4.5 - half:+.3g}, {-4.5 + half:+.3g}] |") in text
    assert "| zero activations stem | 0 | 0.625 ± 0.18 (n=2) | 0.625 ± 0.18 (n=2) | +0 [+0, +0] |" \
        in text
    assert (tmp_path / "plots" / "hessian_eigenvalue_over_training.png").stat().st_size > 0
    assert len((tmp_path / "lenses.csv").read_text().splitlines()) == 1 + 3 * 2
    with pytest.raises(ValueError, match="baseline 'dense' is not an arm"):
        lens_report.lens_report(tmp_path, "variant:dense")
    # one seed per arm: the values and their difference, no spread or interval to print
    for arm in ("vanilla", "tost"):
        shutil.rmtree(tmp_path / f"variant={arm},seed=1")
    text = lens_report.lens_report(tmp_path)
    assert "| hessian eigenvalue | 5 | 15 (n=1) | 12 (n=1) | -3 |" in text
    assert "nan" not in text
