"""The one error a missing dataset raises."""

from sparsejax.errors import UserError


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset is neither prepared nor obtainable here; the message says how to get it and where to put it."""
