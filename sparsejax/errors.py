"""The project's own error type for problems a user can fix.

``python -m launch`` (and ``launch.*``) catch exactly ``UserError`` and print its message as one line;
any other exception is a bug in sparsejax and keeps its traceback. Every subclass also derives from
the builtin that fits (``ValueError``, ``FileNotFoundError``), so library callers can catch those.
"""


class UserError(Exception):
    """Bad input (config, workdir, data, file): the message names the problem and the fix, one line."""


class FileFormatError(UserError, ValueError):
    """A file is not what sparsejax expected (not an ``.npz`` of arrays, or of another model)."""


class TrainError(UserError, ValueError):
    """A run cannot start or go on (bad config, unfit workdir or file, divergence): one line says why."""
