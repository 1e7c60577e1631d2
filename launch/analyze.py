"""``python -m launch.analyze --workdir=DIR [--lenses=a,b] [--step=N]``: the papers' lenses on a run.

Restores the run's checkpoint at ``--step`` (default: its newest) read-only, runs the lenses
(`sparsejax.analysis.lenses`; default: all) on ``config.analysis.batches`` training batches, and
writes ``DIR/analysis/step_<N>/<lens>.json`` and the plots in ``DIR/plots/``: per-layer density, the
mask of one layer, activation sparsity per stage, the 1-D loss curves (random direction and top
eigenvector), the 2-D contour, and, where the run recorded them during training
(``config.analysis``), the eigenvalue and gradient flow over training. ``DIR`` may also be a
comparison (the quickstart): every run in it is analysed and the curves over training share a plot.
Mistakes (no run there, an unknown lens, a step that was not kept) end with one ``error:`` line and
exit code 2; nothing is ever written into a checkpoint directory.
"""

from __future__ import annotations

import functools
import json
import pathlib

from absl import app, flags, logging

from launch.cli import fail

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A finished (or running) run's directory, or a comparison's.")
flags.DEFINE_string("lenses", "", "Comma-separated lenses (default: all of them).")
flags.DEFINE_integer("step", None, "The checkpoint step to analyse (default: the newest).")


def runs_in(workdir: pathlib.Path) -> dict[str, pathlib.Path]:
    """``{name: run directory}``: the directory itself, or the runs of a comparison in it."""
    if (workdir / "config.json").exists():
        return {workdir.name: workdir}
    found = {p.parent.name: p.parent for p in sorted(workdir.glob("*/config.json"))}
    if not found:
        fail(f"{str(workdir)!r} holds no sparsejax run (no config.json in it or its subdirectories); "
             "pass the --workdir of a run")
    return found


def analyse(run: pathlib.Path, names: tuple[str, ...], step: int | None) -> dict[str, dict]:
    """Runs the lenses on ``run``'s checkpoint at ``step``; writes their JSON and plots."""
    import jax
    from jax.sharding import SingleDeviceSharding

    from configs import base
    from sparsejax import data as data_lib, dst, paths
    from sparsejax.analysis import lenses, plots
    from sparsejax.train import build, plan as plan_lib, state as state_lib
    from sparsejax.train.checkpoint import Checkpoints

    config = base.get_config()  # keys a run of an older version lacks keep their defaults
    config.update(json.loads((run / "config.json").read_text()))
    if not (run / "checkpoints").is_dir():
        fail(f"{str(run)!r} has no checkpoints; analyse a run that has trained at least an epoch")
    ds = data_lib.load(config.data.name, batch_size=config.batch_size, seed=config.seed,
                       data_dir=config.data.data_dir or None,
                       manual_dir=config.data.manual_dir or None)
    plan = plan_lib.make(config, ds.steps_per_epoch)
    model = build.model(config, ds.num_classes)
    checkpoints = Checkpoints(run, config.keep_checkpoints, create=False)
    kept = sorted(checkpoints.manager.all_steps())
    step = kept[-1] if step is None and kept else step
    if step not in kept:
        fail(f"step {step} is not among the checkpoints kept in {str(run / 'checkpoints')!r} "
             f"(steps {kept}); pass --step as one of them")
    plain_now = plan.ghost_end is not None and step >= plan.ghost_end
    device = SingleDeviceSharding(jax.devices()[0])

    def target(_):
        s = state_lib.abstract(model, jax.random.key(config.seed), ds.image_shape,
                               functools.partial(build.optimizer, config, plan),
                               **build.init_inputs(config))
        s = state_lib.without_ghosts(s) if plain_now else s
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), s)

    state = checkpoints.restore_step(step, target)
    checkpoints.close()
    net = build.plain_model(model) if plain_now else model
    inputs = {} if plain_now else build.ghost_inputs(config, plan)(state.step)
    subject = lenses.Subject(net, {"params": state.params, "batch_stats": state.batch_stats},
                             dst.get_masks(state.opt_state), inputs)
    batches = [next(it) for it in [iter(ds.train)] for _ in range(config.analysis.batches)]
    results = lenses.run(names, subject, batches, rng=jax.random.key(step),
                         input_shape=ds.image_shape, settings=build.lens_settings(config))

    out, figures = run / "analysis" / f"step_{step}", run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    figures.mkdir(exist_ok=True)
    for name, result in results.items():
        (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    tag = f"step{step}"
    if "structure" in results:
        layers = results["structure"]["report"]["layers"]
        plots.layer_densities(results["structure"]["report"], figures / f"layer_density_{tag}.png")
        convs = [p for p in layers if len(layers[p]["shape"]) == 4]
        middle = convs[len(convs) // 2]  # one layer's mask, as paper 004 Fig. 3
        plots.mask_image(jax.device_get(paths.flatten(subject.masks)[middle]),
                         figures / f"mask_{middle.replace('/', '.')}_{tag}.png", title=middle)
    if "activations" in results:
        plots.activation_sparsity(results["activations"]["stages"]["zero"],
                                  figures / f"activation_sparsity_{tag}.png")
    if "landscape" in results:
        land = results["landscape"]
        plots.curve_1d(land["alphas"], land["random_1d"], figures / f"landscape_1d_{tag}.png",
                       title="random filter-normalised direction")
        plots.curve_1d(land["alphas"], land["eigen_1d"], figures / f"eigenvector_1d_{tag}.png",
                       title="top Hessian eigenvector")
        plots.contour_2d(land["alphas"], land["betas"], land["random_2d"],
                         figures / f"landscape_2d_{tag}.png")
    return results


def over_training(runs: dict[str, pathlib.Path], figures: pathlib.Path) -> list[pathlib.Path]:
    """Eigenvalue and gradient flow over training from the runs' ``analysis/*.jsonl``."""
    from sparsejax.analysis import plots
    written = []
    for lens, key, label in (("hessian", "eigenvalue", "top Hessian eigenvalue"),
                             ("gradient_flow", "total", "gradient flow (norm)")):
        series = {}
        for name, run in runs.items():
            path = run / "analysis" / f"{lens}.jsonl"
            if path.exists():
                lines = [json.loads(line) for line in path.read_text().splitlines() if line]
                series[name] = [(r["step"], r[key]) for r in lines]
        series = {name: points for name, points in series.items() if points}
        if series:
            written.append(plots.over_training(series, figures / f"{lens}_over_training.png",
                                               ylabel=label, log_scale=False))
    return written


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.FATAL)
    if not FLAGS.workdir:
        fail("no run given; pass --workdir=DIR (a directory written by python -m launch)")
    from sparsejax.analysis import lenses
    names = tuple(n.strip() for n in FLAGS.lenses.split(",") if n.strip()) or lenses.LENSES
    try:
        lenses.check(names)
    except ValueError as e:
        fail(str(e))
    workdir = pathlib.Path(FLAGS.workdir)
    if not workdir.is_dir():
        fail(f"workdir {str(workdir)!r} does not exist; pass the --workdir of a run")
    from sparsejax.errors import UserError
    runs = runs_in(workdir)
    for name, run in runs.items():
        try:
            results = analyse(run, names, FLAGS.step)
        except UserError as e:  # a run or checkpoint that cannot be read
            fail(f"{name}: {e}")
        print(f"{name} (step {results and FLAGS.step or 'newest'}): " + ", ".join(
            f"{k}={v:.4g}" for lens, result in results.items()
            for k, v in lenses.scalars(lens, result).items() if k.count("/") <= 2))
    (workdir / "plots").mkdir(exist_ok=True)
    written = over_training(runs, workdir / "plots")
    print(f"plots in {[str(run / 'plots') for run in runs.values()]}"
          + (f" and {workdir / 'plots'}" if written else ""))


if __name__ == "__main__":
    app.run(main)
