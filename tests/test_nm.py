"""N:M structured sparsity: ``masks.n_of_m`` by hand, the finders with ``structure``, DST rules that
keep exactly N per group after every update, the config, a run, and bad input."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import sparsejax
from configs import base
from sparsejax import masks as masks_lib
from sparsejax import paths, pruning
from sparsejax.dst import rigl
from sparsejax.dst.rewiring import Rewiring
from sparsejax.errors import TrainError
from sparsejax.pruning import finders
from sparsejax.train import build, loop, workdir as workdir_lib

# --------------------------------------------------------------------------------------------------
# n_of_m on examples worked out by hand.


def test_n_of_m_groups_along_the_input_channel_first():
    # A conv kernel (kh=1, kw=2, in=4, out=2) is read as (8, 2): rows (kw, in) with in fastest, so
    # group 0 of a column is kw=0 (in 0..3) and group 1 is kw=1. 2:4 keeps the 2 largest of each.
    kernel = np.zeros((1, 2, 4, 2), np.float32)
    kernel[0, 0, :, 0] = [4, -9, 1, 3]      # group 0, column 0: keep 4 and 3 (by value, not |.|)
    kernel[0, 1, :, 0] = [0, 2, 2, 2]       # group 1, column 0: tie of three 2s: lower index wins
    kernel[0, 0, :, 1] = [1e-45, 0, 1e-40, 1e-38]  # subnormals ranked exactly: keep the last two
    kernel[0, 1, :, 1] = [-1, -2, -3, -4]   # all negative: keep -1 and -2
    want = np.zeros((1, 2, 4, 2), bool)
    want[0, 0, :, 0] = [1, 0, 0, 1]
    want[0, 1, :, 0] = [0, 1, 1, 0]
    want[0, 0, :, 1] = [0, 0, 1, 1]
    want[0, 1, :, 1] = [1, 1, 0, 0]
    np.testing.assert_array_equal(masks_lib.n_of_m(kernel, 2, 4), want)
    np.testing.assert_array_equal(masks_lib.group_counts(want, 4), [[2, 2], [2, 2]])
    assert masks_lib.is_n_of_m({"conv": {"kernel": want}}, 2, 4)
    assert not masks_lib.is_n_of_m({"conv": {"kernel": want}}, 1, 4)


def test_n_of_m_on_a_dense_kernel_with_other_n_and_m():
    # Dense (in=6, out=1) at 1:3: groups rows 0-2 and 3-5.
    kernel = np.array([[1], [5], [5], [7], [0], [7]], np.float32)
    np.testing.assert_array_equal(masks_lib.n_of_m(kernel, 1, 3)[:, 0], [0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(masks_lib.n_of_m(kernel, 2, 3)[:, 0], [0, 1, 1, 1, 0, 1])


def test_tensors_whose_reduction_is_not_a_multiple_of_m_stay_dense_and_are_listed():
    scores = {"conv1": {"kernel": jnp.arange(3 * 3 * 3 * 8.0).reshape(3, 3, 3, 8),  # 27 rows
                        "bias": jnp.arange(8.0)},
              "conv2": {"kernel": jnp.arange(3 * 3 * 8 * 4.0).reshape(3, 3, 8, 4)},  # 72 rows
              "ghost": {"kernel": jnp.ones((8, 4))}}  # never pruned (default filter)
    masks = masks_lib.n_of_m(scores, 2, 4)
    assert masks_lib.n_of_m_unfit(scores, 4) == {"conv1/kernel": 27}
    for path, m in paths.flatten(masks).items():
        assert m.dtype == bool and m.shape == paths.flatten(scores)[path].shape
        assert bool(m.all()) == (path != "conv2/kernel"), path
    assert masks_lib.counts(masks)["conv2/kernel"] == (144, 288)
    assert masks_lib.is_n_of_m(masks, 2, 4)  # unfit tensors are not checked
    assert masks_lib.n_of_m_unfit(scores, 3) == {}  # 27 and 72 are multiples of 3


def test_misfit_names_the_tensor_and_the_group():
    mask = np.ones((8, 3), bool)
    mask[:, :] = [[1, 1, 1]] * 2 + [[0, 0, 0]] * 6
    mask[5, 2] = True  # column 2, group 1 keeps 1
    problem = masks_lib.n_of_m_misfit({"fc": {"kernel": mask}}, 2, 4)
    assert problem.startswith("mask of 'fc/kernel' is not 2:4: group 1 of output 0 keeps 0 of 4")


# --------------------------------------------------------------------------------------------------
# A small conv net: conv1 (3·3·3 = 27 rows: left dense at m = 4), conv2 (72 rows) and fc (16 rows).


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.relu(nn.Conv(8, (3, 3), use_bias=False, name="conv1")(x))
        y = nn.BatchNorm(use_running_average=not train, name="bn")(y)
        y = nn.relu(nn.Conv(16, (3, 3), strides=2, use_bias=False, name="conv2")(y))
        return nn.Dense(10, name="fc")(y.mean(axis=(1, 2)))


FIT = ("conv2/kernel", "fc/kernel")


@pytest.fixture(scope="module")
def net():
    model = Net()  # variables drawn with NumPy: no initializer to compile
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 8, 8, 3)))
    rng = np.random.default_rng(0)
    variables = paths.unflatten(shapes, {
        p: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
                       if p.endswith("kernel") else
                       np.ones(s.shape) if p.endswith(("scale", "var")) else np.zeros(s.shape),
                       jnp.float32) for p, s in paths.flatten(shapes).items()})
    params, stats = variables["params"], variables["batch_stats"]

    def apply_fn(p, x):
        return model.apply({"params": p, "batch_stats": stats}, x)

    batches = [{"x": jnp.asarray(rng.normal(size=(8, 8, 8, 3)), jnp.float32),
                "y": jnp.asarray(rng.integers(0, 10, size=8))} for _ in range(2)]
    return params, apply_fn, batches


def finder_kwargs(method, net):
    _, apply_fn, batches = net
    return {"random": {"rng": jax.random.key(3)}, "magnitude": {},
            "snip": {"apply_fn": apply_fn, "batches": batches},
            "grasp": {"apply_fn": apply_fn, "batches": batches},
            "synflow": {"apply_fn": apply_fn, "input_shape": (1, 8, 8, 3), "rounds": 3}}[method]


def assert_n_of_m(masks, params, n, m):
    """Exactly n per group of m in every fitting prunable tensor; the rest all True."""
    assert masks_lib.n_of_m_misfit(masks, n, m) is None
    for path, mask in paths.flatten(masks).items():
        if path in FIT:
            np.testing.assert_array_equal(masks_lib.group_counts(mask, m), n, err_msg=path)
        else:
            assert np.asarray(mask).all(), path


@pytest.mark.parametrize("method", pruning.METHODS)
def test_every_finder_keeps_n_per_group_by_its_scores(method, net):
    params = net[0]
    masks = pruning.find_mask(method, params, 0.5, structure="2:4", **finder_kwargs(method, net))
    masks_lib.validate(masks, params)
    assert_n_of_m(masks, params, 2, 4)
    if method in ("magnitude", "snip", "grasp"):  # the N largest of each group's scores
        kwargs = finder_kwargs(method, net)
        scores = pruning.scores(method, params, apply_fn=kwargs.get("apply_fn"),
                                batches=kwargs.get("batches"))
        want = masks_lib.n_of_m(scores, 2, 4)
        chex.assert_trees_all_equal({p: paths.flatten(masks)[p] for p in FIT},
                                    {p: want[p] for p in FIT})


def test_synflow_keeps_the_structure_at_every_round(net, monkeypatch):
    # 1:4 in 4 rounds: per group kept_count(0.25^(r/4), 4) = 3, 2, 1, 1, each round inside the last.
    rounds = []
    select = finders._Target.select

    def spy(self, scores, exponent=1.0):
        rounds.append(select(self, scores, exponent))
        return rounds[-1]

    monkeypatch.setattr(finders._Target, "select", spy)
    params, apply_fn, _ = net
    pruning.find_mask("synflow", params, 0.75, structure="1:4", apply_fn=apply_fn,
                      input_shape=(1, 8, 8, 3), rounds=4)
    assert len(rounds) == 4
    for r, (kept, previous) in enumerate(zip(rounds, [None] + rounds)):
        for path in FIT:
            np.testing.assert_array_equal(masks_lib.group_counts(kept[path], 4), [3, 2, 1, 1][r])
            if previous is not None:
                assert not (kept[path] & ~previous[path]).any()


# --------------------------------------------------------------------------------------------------
# DST: RigL's N:M rule by hand, and every rule that keeps structure over steps with real gradients.


def test_structured_rigl_regrows_within_the_groups_that_lost_weights():
    # One column, two groups of 4, 2:4. Active |w|: .1 (1), 5 (0) | 3 (4), .2 (6); f = .5 drops
    # floor(2) = 2 smallest: rows 1 and 6. Group 0 grows its largest |g| among rows 1-3: row 2 (9);
    # group 1 among rows 5-7: row 7 (2). Without structure rows 2 and 3 (9, 8) would both grow.
    mask = jnp.asarray([1, 1, 0, 0, 1, 0, 1, 0], bool)[:, None]
    weights = jnp.asarray([5, .1, 0, 0, 3, 0, .2, 0], jnp.float32)[:, None]
    grads = jnp.asarray([0, 0, 9, -8, 0, 1, 0, -2], jnp.float32)[:, None]
    r = Rewiring({"fc": mask}, {"fc": weights}, {"fc": grads}, jnp.float32(0.5),
                 jnp.zeros(2, jnp.uint32), ())
    rewire = jax.jit(rigl.rewire, static_argnames="structure")
    structured, _ = rewire(r, structure=(2, 4))
    np.testing.assert_array_equal(structured["fc"][:, 0], [1, 0, 1, 0, 1, 0, 0, 1])
    plain, _ = rewire(r, structure=None)
    np.testing.assert_array_equal(plain["fc"][:, 0], [1, 0, 1, 1, 1, 0, 0, 0])


@pytest.mark.parametrize("method", ["static", "set", "rigl"])
def test_rules_keep_exactly_n_per_group_after_every_update(method, net):
    params, apply_fn, batches = net
    masks = pruning.find_mask("magnitude", params, 0.5, structure="2:4")
    tx = sparsejax.sparse_training(optax.sgd(0.1, momentum=0.9), masks, method=method,
                                   update_every=1, end_step=100, drop_fraction=0.3,
                                   drop_schedule="constant", structure="2:4")

    @jax.jit
    def step(params, state, batch):
        grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
            apply_fn(p, batch["x"]), batch["y"]).mean())(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state, old = tx.init(params), masks
    for t in range(5):
        params, state = step(params, state, batches[t % 2])
        new = sparsejax.get_masks(state)
        assert_n_of_m(new, params, 2, 4)
        for path, m in paths.flatten(new).items():
            assert not np.asarray(paths.flatten(params)[path])[~np.asarray(m)].any(), path
        metrics = sparsejax.dst.report(state)
        changed = sum(int((paths.flatten(new)[p] != paths.flatten(old)[p]).sum()) for p in FIT)
        assert (changed > 0) == (method != "static" and t > 0), (t, changed)
        for path in FIT:
            assert metrics[f"grown/{path}"] == metrics[f"dropped/{path}"]
        old = new


@pytest.mark.parametrize("method", ["dsr", "ggr", "gmp"])
def test_rules_that_move_density_refuse_structure(method):
    options = {"final_sparsity": 0.9} if method == "gmp" else {}
    with pytest.raises(ValueError, match=f"^{method} cannot keep N:M structure 2:4 .* use one of "
                                         "static, set, rigl$"):
        sparsejax.sparse_training(optax.sgd(0.1), None, method=method, end_step=10,
                                  structure="2:4", **options)


def test_masks_without_the_structure_are_refused_at_init(net):
    params = net[0]
    masks = pruning.find_mask("magnitude", params, 0.5)
    tx = sparsejax.sparse_training(optax.sgd(0.1), masks, method="rigl", end_step=10,
                                   structure="2:4")
    with pytest.raises(ValueError, match=r"structure='2:4'\): mask of 'conv2/kernel' is not 2:4: "
                                         r"group \d+ of output \d+ keeps \d of 4"):
        tx.init(params)


# --------------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("n, m", [(4, 4), (5, 4), (0, 4), (-1, 2), (2.0, 4), (True, 4)])
def test_n_of_m_needs_one_to_m_minus_one(n, m):
    with pytest.raises(ValueError, match=r"^structure .* needs integers 1 <= n < m \(n = m would "
                                         r"be dense\), e\.g\. 2:4$"):
        masks_lib.n_of_m(jnp.ones((4, 2)), n, m)


@pytest.mark.parametrize("structure, match", [
    ("2-4", "write N:M structure as 'n:m'"), ("a:4", "write N:M"), ("2:", "write N:M"),
    ("4:2", "needs integers 1 <= n < m"), ("0:4", "needs integers")])
def test_malformed_structure_is_one_line(structure, match):
    with pytest.raises(ValueError, match=match):
        masks_lib.parse_structure(structure)
    with pytest.raises(ValueError, match=match):
        sparsejax.sparse_training(optax.sgd(0.1), None, method="static", structure=structure)
    assert masks_lib.parse_structure("") is None and masks_lib.parse_structure(None) is None
    assert masks_lib.parse_structure("1:8") == (1, 8)


def test_nan_scores_are_named():
    scores = {"fc": {"kernel": jnp.ones((4, 2)).at[1, 1].set(jnp.nan)}}
    with pytest.raises(ValueError, match="scores of 'fc/kernel' contain NaN"):
        masks_lib.n_of_m(scores, 2, 4)


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 0.9}, r"^sparsity 0.9 contradicts structure '2:4', whose sparsity is 0.5; "
                        r"set sparsity to 0.5$"),
    ({"scope": "layer"}, "per-layer densities do not apply; use scope='global' without densities"),
    ({"scope": "layer", "densities": {"fc/kernel": 0.5}}, "per-layer densities do not apply"),
    ({"structure": "4:4"}, "needs integers 1 <= n < m")])
def test_finder_refuses_what_it_cannot_keep(kwargs, match, net):
    args = {"sparsity": 0.5, "structure": "2:4", **kwargs}
    with pytest.raises(ValueError, match=match):
        pruning.find_mask("magnitude", net[0], args.pop("sparsity"), **args)


# --------------------------------------------------------------------------------------------------
# The config and a ToST run.


def nm_config(**mask):
    c = base.get_config("runlocal")
    c.batch_size, c.progress = 64, False
    c.mask.update({"method": "magnitude", "sparsity": 0.5, "structure": "2:4", **mask})
    return c


@pytest.mark.parametrize("change, match", [
    ({"mask.structure": "2:2"}, "^mask.structure 2:2 needs integers 1 <= n < m"),
    ({"mask.structure": "2/4"}, "^mask.structure is '2/4'; write N:M structure as 'n:m'"),
    ({"mask.sparsity": 0.9}, "^mask.sparsity 0.9 contradicts structure '2:4'"),
    ({"mask.scope": "layer"}, "^mask.structure '2:4' keeps 2 of every 4 weights in each tensor"),
    ({"dst.method": "ggr"}, "^ggr cannot keep N:M structure 2:4")])
def test_config_check_refuses_bad_structure(change, match):
    c = nm_config()
    build.check(c)
    c.update_from_flattened_dict(change)
    with pytest.raises(TrainError, match=match):
        build.check(c)
    assert base.get_config().mask.structure == ""


@pytest.mark.parametrize("method", ["random", "magnitude"])
def test_a_run_starts_from_n_of_m_masks_and_lists_the_dense_tensors(method, net, capsys):
    params, apply_fn, _ = net
    masks = build.initial_masks(nm_config(method=method), params, apply_fn, None, (8, 8, 3), 10)
    assert_n_of_m(masks, params, 2, 4)
    assert capsys.readouterr().out == ("N:M 2:4: left dense (reduction size not a multiple of M): "
                                       "{'conv1/kernel': 27}\n")


@pytest.mark.slow  # a two-epoch run on digits (20 steps; about a minute, mostly compiling)
def test_tost_run_trains_n_of_m_masks(tmp_path, capsys):
    c = nm_config()
    c.tost.update(ghost_skip="conv1x1", ghost_swish=True, beta_max=4.0, label_smoothing=0.1)
    c.batch_size, c.num_epochs, c.optimizer.decay_epochs = 128, 2, (1,)
    c.dst.method, c.dst.update_every, c.dst.drop_fraction = "rigl", 5, 0.3  # updates at 5, 10
    summary = loop.train_and_evaluate(c, tmp_path)
    assert "N:M 2:4: left dense (reduction size not a multiple of M): {'conv1/kernel': 9}" \
        in capsys.readouterr().out
    initial = dict(np.load(tmp_path / workdir_lib.INITIAL_MASKS))
    assert masks_lib.is_n_of_m(initial, 2, 4) and initial["conv1/kernel"].all()
    with ocp.StandardCheckpointer() as checkpointer:
        state = checkpointer.restore((tmp_path / "checkpoints" / "20" / "state").absolute())
    final = state["opt_state"]["masks"]
    assert masks_lib.is_n_of_m(final, 2, 4) and final["conv1"]["kernel"].all()
    assert int(state["opt_state"]["mask_updates"]) == 2
    flat = paths.flatten(final)
    assert sum(int((flat[p] != initial[p]).sum()) for p in initial) > 0
    assert masks_lib.sparsity(final, paths.without_ghosts(state["params"])) > 0.49
    assert summary["step"] == 20 and np.isfinite(summary["final_test_accuracy"])
