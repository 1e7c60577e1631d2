"""Activations of the ToST "ghost soft neurons" (GSw, paper 000 §2.2): ReLU, Swish, PSwish, Mish.

All act elementwise on arrays of any shape. PSwish's sharpness β is a call argument (a traced scalar
inside `jax.jit`), so a schedule can change it every step without recompiling. β = +inf is allowed
and gives exactly ReLU (same values and gradients as `jax.nn.relu`): this is how `ghost_beta`
schedules end the ghost phase inside one compiled step.

`observe_activations` lets an analysis see every `activate` output (activation sparsity, paper 000
Table 1) without changing the models.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

import jax
import jax.numpy as jnp

ArrayLike = jax.typing.ArrayLike

relu = jax.nn.relu
swish = jax.nn.silu
mish = jax.nn.mish


def pswish(x: jax.Array, beta: ArrayLike) -> jax.Array:
    """Parametric Swish x · sigmoid(β x) (paper 000 §2.2).

    β = 0 is x/2, β = 1 is Swish (SiLU), β → ∞ tends to ReLU and β = +inf *is* ReLU exactly.
    """
    beta = jnp.asarray(beta, x.dtype)
    is_relu = jnp.isposinf(beta)
    # A finite stand-in keeps inf·0 (and its NaN gradient) out of the branch `where` discards.
    finite_beta = jnp.where(is_relu, jnp.ones_like(beta), beta)
    return jnp.where(is_relu, relu(x), x * jax.nn.sigmoid(finite_beta * x))


_FIXED: dict[str, Callable[[jax.Array], jax.Array]] = {"relu": relu, "swish": swish, "mish": mish}
ACTIVATIONS: tuple[str, ...] = (*_FIXED, "pswish")

DEFAULT_PSWISH_BETA = 1.0

Observer = Callable[[jax.Array], None]
_OBSERVER: contextvars.ContextVar[Observer | None] = contextvars.ContextVar("activation_observer",
                                                                            default=None)


def check_activation(name: str) -> None:
    """Raises ValueError unless ``name`` is one of `ACTIVATIONS`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of {', '.join(ACTIVATIONS)}")


def activate(name: str, x: jax.Array, beta: ArrayLike | None = None) -> jax.Array:
    """Applies the activation ``name`` to ``x``.

    ``beta`` is read only by "pswish"; ``None`` there means β = 1 (Swish, the paper's GSw). The
    result also goes to the observer of an enclosing `observe_activations` block, if any.
    """
    check_activation(name)
    if name == "pswish":
        y = pswish(x, DEFAULT_PSWISH_BETA if beta is None else beta)
    else:
        y = _FIXED[name](x)
    observer = _OBSERVER.get()
    if observer is not None:
        observer(y)
    return y


@contextlib.contextmanager
def observe_activations(observer: Observer) -> Iterator[None]:
    """Calls ``observer(y)`` with the output ``y`` of every `activate` call made inside the block.

    The observer runs while the model runs or is traced: under `jax.jit` ``y`` is a tracer, so keep
    what the observer computes and return it from the traced function (no side effects on values).
    """
    token = _OBSERVER.set(observer)
    try:
        yield
    finally:
        _OBSERVER.reset(token)
