"""The papers' analyses as mask-aware lenses, one module each (DESIGN.md, "analysis/").

``activations`` (activation sparsity per site and stage), ``hessian`` (top eigenvalue, trace),
``gradient_flow``, ``landscape`` (1-D/2-D loss surfaces), ``structure`` (per-layer density, empty
neurons, FLOPs, condense), ``plots`` (matplotlib PNGs) and ``lenses`` (the lenses by name, as the
train loop's ``config.analysis`` hook and ``python -m launch.analyze`` run them). Every lens takes
``loss_fn(params, batch) -> scalar`` (or the model), the masks and a list of batches; none imports
``sparsejax.train``.
"""

from sparsejax.analysis import activations, gradient_flow, hessian, landscape, lenses, plots, structure

__all__ = ["activations", "gradient_flow", "hessian", "landscape", "lenses", "plots", "structure"]
