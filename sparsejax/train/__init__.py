"""The training loop, as a small package (flax ``examples/imagenet`` and big_vision's shape).

- `loop`: ``train_and_evaluate(config, workdir)``, sections mesh → input → model → state → steps →
  loop → end;
- `build`: the config checked up front, and the model, optimizer, ghost inputs and masks it names;
- `plan`: the config's epochs and fractions as steps, and when periodic work runs;
- `state`: ``TrainState``, its step-0 value and its abstract shape (``jax.eval_shape``);
- `step`: the pure ``train_step`` / ``eval_step``;
- `checkpoint`: orbax save and restore from the newest readable step;
- `metrics`: ``metrics.jsonl`` and TensorBoard;
- `workdir`: the run directory's lock, config check, and ``.npz`` variables;
- `compare`: ``mode = "compare"``, a run per variant.
"""

from sparsejax.errors import TrainError
from sparsejax.train.build import MODES
from sparsejax.train.compare import comparison_table, run_variants
from sparsejax.train.loop import train_and_evaluate
from sparsejax.train.workdir import FINAL_VARIABLES, REWIND_VARIABLES

__all__ = ["FINAL_VARIABLES", "MODES", "REWIND_VARIABLES", "TrainError", "comparison_table",
           "run_variants", "train_and_evaluate"]
