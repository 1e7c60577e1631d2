from sparsejax.dst import get_masks, sparse_training  # noqa: F401
