"""Mask pytrees (sparsejax.masks): exact counts, apply, statistics, save/load and every validation error."""

import os
import pickle
import zipfile

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sparsejax import masks, paths
from sparsejax.errors import FileFormatError


class Small(nn.Module):
    """conv/kernel (3,3,2,4) = 72 weights, head/kernel (4,3) = 12; biases and BatchNorm are vectors."""

    head: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn")(x)
        return nn.Dense(self.head, name="head")(x.mean(axis=(1, 2)))


def init(model=None):
    model = model or Small()
    return jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 5, 5, 2)))["params"]


PARAMS = init()
DENSITIES = {"conv/kernel": 0.5, "head/kernel": 0.25}


MAGNITUDE = masks.from_scores(jax.tree.map(jnp.abs, PARAMS), DENSITIES)


def magnitude_masks():
    """A fresh (mutable) copy of the magnitude masks at DENSITIES."""
    return jax.tree.map(lambda m: m, MAGNITUDE)


# ---------------------------------------------------------------- counts from scores


@pytest.mark.parametrize("density, size, kept", [
    (0.0, 10, 0), (1.0, 10, 10), (0.5, 7, 4),  # round(3.5) = 4: halves round up
    (0.25, 10, 3), (0.05, 10, 1), (0.04, 10, 1),  # at least one unless d = 0
    (1e-9, 5, 1), (0.999, 10, 10), (0.3, 1, 1), (0.7, 3, 2), (0.5, 1, 1),
])
def test_kept_count_is_round_d_n_and_at_least_one(density, size, kept):
    assert masks.kept_count(density, size) == kept


SHAPES = [(3, 5, 7), (1,), (13, 1, 2), (2, 9), (5, 1, 3)]  # as in test_topk: compiled once
FLOAT32 = st.one_of(st.floats(width=32, allow_nan=False), st.integers(-2, 2).map(float),
                    st.sampled_from([0.0, -0.0, np.inf, -np.inf]))
DENSITY = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, 0.5, 1e-6]))


@st.composite
def scores_and_densities(draw):
    shapes = [draw(st.sampled_from(SHAPES)) for _ in range(3)]
    scores = {"a": {"kernel": draw(hnp.arrays(np.float32, shapes[0], elements=FLOAT32))},
              "b": {"kernel": draw(hnp.arrays(np.float32, shapes[1], elements=FLOAT32)),
                    "bias": draw(hnp.arrays(np.float32, shapes[2], elements=FLOAT32))}}
    names = draw(st.sets(st.sampled_from(["a/kernel", "b/kernel", "b/bias"]), min_size=1))
    return scores, {name: draw(DENSITY) for name in sorted(names)}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scores_and_densities())
def test_from_scores_keeps_exactly_round_d_n_of_the_largest(case):
    scores, densities = case
    got = masks.from_scores(scores, densities)
    assert jax.tree.structure(got) == jax.tree.structure(scores)
    flat_masks = paths.flatten(got)
    for path, s in paths.flatten(scores).items():
        m = np.asarray(flat_masks[path])
        assert m.dtype == np.bool_ and m.shape == s.shape
        if path not in densities:
            assert m.all(), path
            continue
        assert m.sum() == masks.kept_count(densities[path], s.size), path
        kept, dropped = s[m], s[~m]
        if kept.size and dropped.size:
            assert kept.min() >= dropped.max(), path


def test_from_scores_under_jit_equals_eager():
    scores = jax.tree.map(jnp.abs, PARAMS)
    jitted = jax.jit(lambda s: masks.from_scores(s, DENSITIES))(scores)
    chex.assert_trees_all_equal(jitted, magnitude_masks(), strict=True)


def test_tensors_not_named_keep_an_all_true_mask():
    m = magnitude_masks()
    for leaf in [m["conv"]["bias"], m["bn"]["scale"], m["bn"]["bias"], m["head"]["bias"]]:
        assert leaf.dtype == jnp.bool_ and bool(leaf.all())
    assert not bool(m["conv"]["kernel"].all()) and not bool(m["head"]["kernel"].all())
    assert all(bool(x.all()) for x in jax.tree.leaves(masks.ones_like(PARAMS)))


def test_random_masks_exact_counts_and_different_per_seed():
    densities = {"conv/kernel": 0.3, "head/kernel": 0.5}
    a = masks.random(jax.random.key(1), PARAMS, densities)
    b = masks.random(jax.random.key(2), PARAMS, densities)
    again = masks.random(jax.random.key(1), PARAMS, densities)
    for m in (a, b):
        assert int(m["conv"]["kernel"].sum()) == 22  # round(0.3 * 72) = round(21.6)
        assert int(m["head"]["kernel"].sum()) == 6
        assert bool(m["conv"]["bias"].all()) and bool(m["bn"]["scale"].all())
    assert not np.array_equal(a["conv"]["kernel"], b["conv"]["kernel"])
    assert not np.array_equal(a["head"]["kernel"], b["head"]["kernel"])
    chex.assert_trees_all_equal(a, again, strict=True)


def test_uniform_scores_are_one_flat_draw_cut_in_order():
    rng = jax.random.key(4)
    shapes = {"b/kernel": (3, 2), "a/kernel": (4,), "c/kernel": (2, 1, 2)}
    got = masks.uniform_scores(rng, shapes)
    assert list(got) == list(shapes)  # the order given, not sorted
    flat = np.asarray(jax.random.uniform(rng, (14,)))
    chex.assert_trees_all_equal(got, {"b/kernel": flat[:6].reshape(3, 2), "a/kernel": flat[6:10],
                                      "c/kernel": flat[10:].reshape(2, 1, 2)}, strict=True)
    assert masks.uniform_scores(rng, {}) == {}


def test_random_masks_keep_the_largest_of_one_flat_draw():
    # The named tensors in tree order share one draw (conv first, then head): 72 + 12 scores.
    rng, densities = jax.random.key(5), {"head/kernel": 0.5, "conv/kernel": 0.25}
    flat = np.asarray(jax.random.uniform(rng, (84,)))
    want = {"conv/kernel": flat[:72].reshape(3, 3, 2, 4), "head/kernel": flat[72:].reshape(4, 3)}
    for path, m in paths.flatten(masks.random(rng, PARAMS, densities)).items():
        if path in want:
            kept = masks.kept_count(densities[path], want[path].size)
            threshold = np.sort(want[path].reshape(-1))[-kept]
            np.testing.assert_array_equal(m, want[path] >= threshold, err_msg=path)
        else:
            assert np.asarray(m).all(), path


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int32])
def test_apply_zeroes_exactly_and_keeps_dtype(dtype):
    params = jax.tree.map(lambda p: (p * 10 - 1).astype(dtype), PARAMS)
    out = masks.apply(params, MAGNITUDE)
    want = jax.tree.map(lambda p, m: np.where(m, np.asarray(p), np.zeros((), p.dtype)), params,
                        MAGNITUDE)
    chex.assert_trees_all_equal(out, want, strict=True)  # dtypes, shapes, values

    def signs(tree):  # -0.0 equals 0.0 above: the zeros must be +0.0
        return jax.tree.map(lambda x: np.signbit(np.asarray(x, np.float32)), tree)

    chex.assert_trees_all_equal(signs(out), signs(want))
    assert int((np.asarray(out["conv"]["kernel"]) == 0).sum()) >= 36


# ---------------------------------------------------------------- statistics on a flax model


def test_counts_sparsity_layer_densities_by_hand():
    # conv/kernel: 72 weights, round(0.5 * 72) = 36 kept; head/kernel: 12 weights, round(0.25 * 12) = 3.
    # Prunable total 84, kept 39: sparsity 45 / 84.
    m = magnitude_masks()
    assert masks.counts(m, PARAMS) == {"conv/kernel": (36, 72), "head/kernel": (3, 12)}
    assert masks.layer_densities(m, PARAMS) == {"conv/kernel": 0.5, "head/kernel": 0.25}
    assert masks.sparsity(m, PARAMS) == pytest.approx(45 / 84)
    # Without params every leaf is counted: biases and BatchNorm are all kept.
    assert masks.counts(m) == {"bn/bias": (4, 4), "bn/scale": (4, 4), "conv/bias": (4, 4),
                               "conv/kernel": (36, 72), "head/bias": (3, 3), "head/kernel": (3, 12)}
    only_head = masks.counts(m, PARAMS, filter_fn=lambda path, leaf: path.startswith("head/"))
    assert only_head == {"head/bias": (3, 3), "head/kernel": (3, 12)}
    assert masks.sparsity(masks.ones_like(PARAMS), PARAMS) == 0.0


def test_summary_table_by_hand():
    lines = masks.summary(magnitude_masks(), PARAMS).splitlines()
    assert lines[0].split() == ["layer", "shape", "kept", "size", "density"]
    assert lines[1].split() == ["conv/kernel", "3x3x2x4", "36", "72", "0.5000"]
    assert lines[2].split() == ["head/kernel", "4x3", "3", "12", "0.2500"]
    assert lines[3].split() == ["total", "39", "84", "0.4643"]  # 39 / 84
    assert len(lines) == 4


# ---------------------------------------------------------------- save / load


def test_save_load_round_trip_is_bit_exact(tmp_path):
    m = magnitude_masks()
    masks.save(tmp_path / "m.npz", m)
    loaded = masks.load(tmp_path / "m.npz", PARAMS)
    chex.assert_trees_all_equal(loaded, m, strict=True)  # structure, dtype bool, shapes, values
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left behind
    with zipfile.ZipFile(tmp_path / "m.npz") as stored:  # keyed by parameter path, compressed
        assert sorted(stored.namelist()) == sorted(f"{p}.npy" for p in paths.flatten(m))
        assert {info.compress_type for info in stored.infolist()} == {zipfile.ZIP_DEFLATED}


def test_save_into_a_missing_directory_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(OSError):
        masks.save(tmp_path / "missing" / "m.npz", magnitude_masks())
    assert os.listdir(tmp_path) == []


class _HalfWritten:
    """A file object that writes half of what it is given, then fails (a full disk)."""

    def __init__(self, fd, mode):
        self.file = open(fd, mode)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, data):
        self.file.write(data[:len(data) // 2])
        self.file.flush()
        raise OSError("disk full")


def _broken_savez(file, **arrays):
    file.write(b"PK\x03\x04 half a zip")
    raise OSError("disk full")


def _broken_replace(src, dst):
    raise OSError("disk full")


@pytest.mark.parametrize("module, name, broken", [
    (np, "savez_compressed", _broken_savez),  # while encoding
    (os, "fdopen", _HalfWritten),  # half of the bytes on disk
    (os, "replace", _broken_replace),  # at the rename
], ids=["encoding", "writing", "renaming"])
def test_save_failing_keeps_the_old_file_and_no_partial_file(tmp_path, monkeypatch, module, name,
                                                            broken):
    target = tmp_path / "m.npz"
    masks.save(target, masks.ones_like(PARAMS))
    before = target.read_bytes()
    monkeypatch.setattr(module, name, broken)
    with pytest.raises(OSError, match="disk full"):
        masks.save(target, magnitude_masks())
    assert os.listdir(tmp_path) == ["m.npz"]
    assert target.read_bytes() == before


# ---------------------------------------------------------------- validation errors


def test_validate_accepts_a_fitting_mask():
    masks.validate(magnitude_masks(), PARAMS)


def test_validate_missing_path():
    m = magnitude_masks()
    del m["head"]["kernel"]
    with pytest.raises(ValueError, match="missing parameter 'head/kernel'"):
        masks.validate(m, PARAMS)


def test_validate_extra_path():
    m = magnitude_masks()
    m["extra"] = {"kernel": jnp.ones((2,), bool)}
    with pytest.raises(ValueError, match="'extra/kernel', which is not a parameter"):
        masks.validate(m, PARAMS)


def test_validate_wrong_shape_names_path_expected_and_given():
    m = magnitude_masks()
    m["conv"]["kernel"] = jnp.ones((3, 3, 2, 5), bool)
    with pytest.raises(ValueError, match=r"'conv/kernel' has shape \(3, 3, 2, 5\), expected \(3, 3, 2, 4\)"):
        masks.validate(m, PARAMS)


def test_validate_float_mask_names_path_and_dtypes():
    m = magnitude_masks()
    m["head"]["kernel"] = m["head"]["kernel"].astype(jnp.float32)
    with pytest.raises(ValueError, match="'head/kernel' has dtype float32, expected bool"):
        masks.validate(m, PARAMS)


def test_validate_different_container_structure():
    params = {"blocks": [jnp.ones((2, 2)), jnp.ones((3, 2))]}
    m = {"blocks": (jnp.ones((2, 2), bool), jnp.ones((3, 2), bool))}  # same paths, tuple not list
    with pytest.raises(ValueError, match="structure"):
        masks.validate(m, params)


def test_load_a_file_for_another_model(tmp_path):
    masks.save(tmp_path / "m.npz", magnitude_masks())
    other = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))}}
    with pytest.raises(FileFormatError, match="'bn/bias', which is not a parameter of this model"):
        masks.load(tmp_path / "m.npz", other)
    wider_head = init(Small(head=5))  # same paths, head/kernel (4, 5)
    with pytest.raises(FileFormatError, match=r"m.npz' does not fit this model: mask of 'head/bias' "
                                              r"has shape \(3,\), expected \(5,\)"):
        masks.load(tmp_path / "m.npz", wider_head)
    fewer = {k: v for k, v in PARAMS.items() if k != "bn"}
    with pytest.raises(FileFormatError, match="'bn/bias', which is not a parameter"):
        masks.load(tmp_path / "m.npz", fewer)
    masks.save(tmp_path / "partial.npz", {k: v for k, v in magnitude_masks().items() if k != "bn"})
    with pytest.raises(FileFormatError, match="no mask for 'bn/bias'; make one with "
                                              r"sparsejax.masks.save\(path, masks\) for this model"):
        masks.load(tmp_path / "partial.npz", PARAMS)
    np.savez(tmp_path / "uint8.npz", **{p: np.asarray(m, np.uint8)
                                        for p, m in paths.flatten(magnitude_masks()).items()})
    with pytest.raises(FileFormatError, match="'bn/bias' has dtype uint8, expected bool"):
        masks.load(tmp_path / "uint8.npz", PARAMS)
    assert issubclass(FileFormatError, ValueError)  # callers that catch ValueError still do


@pytest.mark.parametrize("name, write", [
    ("masks.py", lambda path: path.write_text("masks = {'conv/kernel': [True, False]}\n")),
    ("masks.pkl", lambda path: path.write_bytes(pickle.dumps(paths.flatten(MAGNITUDE)))),
    ("empty.npz", lambda path: path.write_bytes(b"")),
    ("objects.npz", lambda path: np.savez(path, **{"conv/kernel": np.array([{}], object)})),
])
def test_load_a_file_that_is_not_a_mask_npz_says_how_to_make_one(tmp_path, name, write):
    write(tmp_path / name)
    match = (rf"mask file '.*{name}' is not a sparsejax .npz of arrays keyed by parameter path .*; "
             r"make one with sparsejax.masks.save\(path, masks\)$")
    with pytest.raises(FileFormatError, match=match):
        masks.load(tmp_path / name, PARAMS)


def test_load_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        masks.load(tmp_path / "missing.npz", PARAMS)


def test_nan_scores_name_the_path():
    scores = jax.tree.map(jnp.abs, PARAMS)
    scores["head"]["kernel"] = scores["head"]["kernel"].at[1, 2].set(jnp.nan)
    with pytest.raises(ValueError, match="scores of 'head/kernel' contain NaN"):
        masks.from_scores(scores, DENSITIES)
    # NaN in a tensor that is not pruned does not matter: it keeps its all-True mask.
    scores = jax.tree.map(jnp.abs, PARAMS)
    scores["conv"]["bias"] = scores["conv"]["bias"].at[0].set(jnp.nan)
    assert bool(masks.from_scores(scores, DENSITIES)["conv"]["bias"].all())


def test_density_for_a_path_that_does_not_exist():
    with pytest.raises(ValueError, match="'conv/weight', which is not a parameter path"):
        masks.from_scores(PARAMS, {"conv/weight": 0.5})
    with pytest.raises(ValueError, match="'conv/weight'"):
        masks.random(jax.random.key(0), PARAMS, {"conv/weight": 0.5})


@pytest.mark.parametrize("density", [1.5, -0.1, float("nan")])
def test_density_outside_unit_interval_names_path_value_and_range(density):
    with pytest.raises(ValueError, match=rf"'head/kernel' is {density}; a density must lie in \[0, 1\]"):
        masks.from_scores(PARAMS, {"head/kernel": density})
