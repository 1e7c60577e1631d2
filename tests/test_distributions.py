"""Per-layer densities (sparsejax.distributions): ERK/ER by hand, budget on ResNet-18, options, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import distributions, masks, paths


def kernel(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


# Three dense layers; biases are vectors and never prunable.
MLP = {"l1": {"kernel": np.zeros((4, 8)), "bias": np.zeros(8)},
       "l2": {"kernel": np.zeros((8, 8)), "bias": np.zeros(8)},
       "l3": {"kernel": np.zeros((8, 2)), "bias": np.zeros(2)}}
L1, L2, L3 = "l1/kernel", "l2/kernel", "l3/kernel"


def approx(values):
    return pytest.approx(values, rel=1e-12, abs=1e-12)


def test_erk_by_hand_at_sparsity_half():
    # N = 32, 64, 16 (total 112); budget = 0.5 * 112 = 56.
    # raw = (4+8)/32 = 0.375, (8+8)/64 = 0.25, (8+2)/16 = 0.625.
    # Σ raw·N = 12 + 16 + 10 = 38; eps = 56/38; eps·raw = 21/38, 14/38, 35/38 (max 0.92 <= 1: done).
    got = distributions.erk(MLP, 0.5)
    assert list(got) == [L1, L2, L3]
    assert got == approx({L1: 21 / 38, L2: 14 / 38, L3: 35 / 38})


def test_erk_by_hand_when_a_layer_exceeds_one():
    # Sparsity 0.3: budget = 0.7 * 112 = 78.4; eps = 78.4/38 = 2.063; eps·0.625 = 1.289 > 1
    # -> l3 dense (16 weights). Remaining 62.4 over Σ raw·N = 12 + 16 = 28: eps = 62.4/28 = 2.2286;
    # l1 = 0.375·eps = 0.835714 (<= 1, done), l2 = 0.25·eps = 0.557143.
    got = distributions.erk(MLP, 0.3)
    assert got == approx({L1: 0.375 * 62.4 / 28, L2: 0.25 * 62.4 / 28, L3: 1.0})
    # Sparsity 0.1: budget 100.8; eps = 100.8/38, l3 1.658 > 1 -> dense; remaining 84.8 / 28:
    # eps = 3.0286, l1 = 1.136 > 1 -> dense; remaining 84.8 - 32 = 52.8 over l2 alone (16):
    # eps = 3.3, l2 = 0.825.
    assert distributions.erk(MLP, 0.1) == approx({L1: 1.0, L2: 0.825, L3: 1.0})
    # Sparsity 0: everything dense.
    assert distributions.erk(MLP, 0.0) == approx({L1: 1.0, L2: 1.0, L3: 1.0})


# A conv (kernel size counts for ERK, not for ER) and a dense layer.
CONV_NET = {"conv": {"kernel": kernel(3, 3, 2, 4), "bias": kernel(4)},
            "dense": {"kernel": kernel(4, 8), "bias": kernel(8)}}


def test_er_and_erk_by_hand_on_a_conv():
    # N = 72 and 32 (total 104), budget at sparsity 0.5 = 52.
    # ER:  raw = (2+4)/(2·4) = 0.75 and (4+8)/32 = 0.375; Σ raw·N = 54 + 12 = 66; eps = 52/66:
    #      conv = 0.75·52/66 = 39/66 = 0.5909, dense = 0.375·52/66 = 19.5/66 = 0.2955.
    # ERK: raw = (3+3+2+4)/72 = 1/6 and 0.375; Σ raw·N = 12 + 12 = 24; eps = 52/24:
    #      conv = 52/144 = 0.3611, dense = 0.375·52/24 = 0.8125.
    assert distributions.er(CONV_NET, 0.5) == approx({"conv/kernel": 39 / 66, "dense/kernel": 19.5 / 66})
    assert distributions.erk(CONV_NET, 0.5) == approx({"conv/kernel": 52 / 144, "dense/kernel": 0.8125})
    # For dense layers ER and ERK agree.
    assert distributions.er(MLP, 0.3) == approx(distributions.erk(MLP, 0.3))


def test_power_scale():
    # power_scale 2 at sparsity 0.5: raw² = 0.140625, 0.0625, 0.390625; Σ raw²·N = 4.5 + 4 + 6.25 = 14.75;
    # eps = 56/14.75, l3 = 1.483 > 1 -> dense; remaining 40 over 4.5 + 4 = 8.5: eps = 80/17,
    # l1 = 0.140625·80/17 = 45/68, l2 = 0.0625·80/17 = 5/17.
    assert distributions.erk(MLP, 0.5, power_scale=2.0) == approx({L1: 45 / 68, L2: 5 / 17, L3: 1.0})
    # power_scale 0 makes every raw 1: the uniform density.
    assert distributions.erk(MLP, 0.5, power_scale=0.0) == approx({L1: 0.5, L2: 0.5, L3: 0.5})


def test_custom_densities_count_against_the_budget():
    # l1 fixed at 0.25 holds 8 of the 56; the remaining 48 go to l2, l3: Σ raw·N = 16 + 10 = 26,
    # eps = 48/26, l3 = 0.625·48/26 = 1.154 > 1 -> dense; remaining 32 over l2 (raw·N = 16): eps 2,
    # l2 = 0.5.
    assert distributions.erk(MLP, 0.5, custom={L1: 0.25}) == approx({L1: 0.25, L2: 0.5, L3: 1.0})
    # A dense layer: l3 holds 16; the other 40 go to l1, l2: Σ raw·N = 28, eps = 40/28.
    assert distributions.erk(MLP, 0.5, dense=[L3]) == approx(
        {L1: 0.375 * 40 / 28, L2: 0.25 * 40 / 28, L3: 1.0})


# ---------------------------------------------------------------- CIFAR ResNet-18 kernel shapes


def resnet18_params():
    """Kernel (HWIO) and BatchNorm shapes of the CIFAR ResNet-18, in definition order."""
    def bn(c):
        return {"scale": kernel(c), "bias": kernel(c)}

    params = {"conv_init": {"kernel": kernel(3, 3, 3, 64)}, "bn_init": bn(64)}
    c_in = 64
    for stage, width in enumerate([64, 128, 256, 512], start=1):
        for block in range(2):
            p = {"conv1": {"kernel": kernel(3, 3, c_in, width)}, "bn1": bn(width),
                 "conv2": {"kernel": kernel(3, 3, width, width)}, "bn2": bn(width)}
            if c_in != width:
                p["shortcut"] = {"kernel": kernel(1, 1, c_in, width)}
                p["shortcut_bn"] = bn(width)
            params[f"layer{stage}_{block}"] = p
            c_in = width
    params["head"] = {"kernel": kernel(512, 10), "bias": kernel(10)}
    return params


RESNET18 = resnet18_params()
SIZES = {p: int(np.prod(leaf.shape)) for p, leaf in paths.flatten(RESNET18).items()
         if len(leaf.shape) >= 2}


def test_resnet18_shapes():
    assert len(SIZES) == 21  # stem, 16 3×3 convs, 3 shortcuts, head
    assert sum(SIZES.values()) == 11_164_352


@pytest.mark.parametrize("rule", [distributions.erk, distributions.er])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95, 0.99])
def test_budget_is_conserved_on_resnet18(rule, sparsity):
    got = rule(RESNET18, sparsity)
    assert set(got) == set(SIZES)
    assert all(0.0 < d <= 1.0 for d in got.values()), got
    total = sum(SIZES.values())
    budget = round((1 - sparsity) * total)
    assert sum(got[p] * SIZES[p] for p in got) == pytest.approx((1 - sparsity) * total, rel=1e-9)
    kept = sum(masks.kept_count(got[p], SIZES[p]) for p in got)
    assert abs(kept - budget) <= len(got)
    if rule is distributions.erk and sparsity == 0.5:
        # The solve had to iterate: small layers (stem, head, first stage) hit density 1.
        assert got["conv_init/kernel"] == 1.0 and got["head/kernel"] == 1.0
        assert got["layer4_1/conv2/kernel"] < 1.0


def test_erk_density_grows_with_raw_on_resnet18():
    got = distributions.erk(RESNET18, 0.9)
    raw = {p: sum(leaf.shape) / np.prod(leaf.shape) for p, leaf in paths.flatten(RESNET18).items()
           if p in got}
    for a in got:
        for b in got:
            if raw[a] > raw[b]:
                assert got[a] >= got[b], (a, b)


# ---------------------------------------------------------------- first / last (definition order)


class Ordered(nn.Module):
    """Definition order z_in, b_mid, a_out is the reverse of the sorted (JAX tree) order."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(8, name="z_in")(x)  # kernel (3, 8)
        x = nn.Conv(4, (3, 3), name="b_mid")(x)  # kernel (3, 3, 8, 4)
        return nn.Dense(2, name="a_out")(x)  # kernel (4, 2)


# Eager init: the dicts keep Flax's call order. (Anything that rebuilds the dicts through a JAX tree
# function, e.g. jax.jit(init) or jax.tree.map, returns them in sorted key order instead.)
ORDERED = Ordered().init(jax.random.key(0), jnp.ones((1, 5, 5, 3)))["params"]
FIRST, MID, LAST = "z_in/kernel", "b_mid/kernel", "a_out/kernel"


def test_first_and_last_follow_the_definition_order():
    assert [p for p in distributions.definition_order(ORDERED) if p.endswith("kernel")] == [FIRST, MID, LAST]
    sizes = {FIRST: 24, MID: 288, LAST: 8}
    for rule in (distributions.erk, distributions.er):
        got = rule(ORDERED, 0.8, dense=["first", "last"])
        assert list(got) == [FIRST, MID, LAST]
        assert got[FIRST] == 1.0 and got[LAST] == 1.0
        # The middle layer takes the rest of the budget: 0.2 · 320 = 64, minus 24 + 8 -> 32 / 288.
        assert got[MID] == pytest.approx(32 / 288)
        assert sum(got[p] * sizes[p] for p in got) == pytest.approx(0.2 * 320)
    uniform = distributions.uniform(ORDERED, 0.8, dense=["first"])
    assert uniform == approx({FIRST: 1.0, MID: 0.2, LAST: 0.2})
    assert distributions.uniform(ORDERED, 0.8, dense=["last"]) == approx({FIRST: 0.2, MID: 0.2, LAST: 1.0})


def test_uniform():
    assert distributions.uniform(MLP, 0.75) == approx({L1: 0.25, L2: 0.25, L3: 0.25})
    # Fixed layers are not compensated.
    assert distributions.uniform(MLP, 0.75, custom={L2: 0.5}) == approx({L1: 0.25, L2: 0.5, L3: 0.25})
    # A filter_fn chooses what is prunable.
    only_l1 = distributions.uniform(MLP, 0.5, filter_fn=lambda path, leaf: path.startswith("l1/"))
    assert only_l1 == {"l1/kernel": 0.5, "l1/bias": 0.5}


def test_by_name():
    assert distributions.by_name("erk") is distributions.erk
    assert distributions.by_name("er") is distributions.er
    assert distributions.by_name("uniform") is distributions.uniform
    with pytest.raises(ValueError, match="unknown density distribution 'ekr'"):
        distributions.by_name("ekr")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("rule", [distributions.uniform, distributions.er, distributions.erk])
@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_sparsity_outside_zero_one(rule, sparsity):
    with pytest.raises(ValueError, match=rf"sparsity is {sparsity}; it must lie in \[0, 1\)"):
        rule(MLP, sparsity)


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5, float("nan")])
def test_check_sparsity_is_the_one_range_check(sparsity):
    with pytest.raises(ValueError, match=rf"^sparsity is {sparsity}; it must lie in \[0, 1\) "
                                         r"\(fraction of zeros\)$"):
        distributions.check_sparsity(sparsity)


def test_check_sparsity_returns_a_float():
    for sparsity, want in [(0, 0.0), (0.5, 0.5), (np.float32(0.25), 0.25), (0.999, 0.999)]:
        got = distributions.check_sparsity(sparsity)
        assert type(got) is float and got == want


@pytest.mark.parametrize("rule", [distributions.uniform, distributions.er, distributions.erk])
def test_unknown_path(rule):
    with pytest.raises(ValueError, match="'l4/kernel', which is not a prunable parameter"):
        rule(MLP, 0.5, dense=["l4/kernel"])
    with pytest.raises(ValueError, match="'l1/bias', which is not a prunable parameter"):
        rule(MLP, 0.5, custom={"l1/bias": 0.5})


@pytest.mark.parametrize("density", [1.5, -0.5])
def test_custom_density_outside_unit_interval(density):
    with pytest.raises(ValueError, match=rf"density of 'l2/kernel' is {density}; it must lie in \[0, 1\]"):
        distributions.erk(MLP, 0.5, custom={L2: density})


def test_budget_exceeded_by_fixed_layers():
    # l2 dense holds 64 weights; the budget at sparsity 0.5 is 56.
    with pytest.raises(ValueError, match="hold 64 weights, more than the budget 56 at sparsity 0.5"):
        distributions.erk(MLP, 0.5, dense=[L2])
    with pytest.raises(ValueError, match="more than the budget"):
        distributions.er(MLP, 0.5, custom={L2: 0.9})


def test_budget_out_of_reach_when_fixed_layers_hold_too_little():
    # l2 fixed at 0 at sparsity 0.1: the budget 100.8 cannot be met by l1 + l3 (48 weights together).
    with pytest.raises(ValueError, match="cannot reach the budget"):
        distributions.erk(MLP, 0.1, custom={L2: 0.0})


def test_no_prunable_parameters():
    with pytest.raises(ValueError, match="no prunable parameters"):
        distributions.erk({"bias": np.zeros(3)}, 0.5)
