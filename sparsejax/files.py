"""Files that are never half-written, and the ``.npz`` format of masks and variables.

Everything sparsejax writes outside orbax goes through `write_atomic`: the bytes go to a temporary file
in the same directory, which is then renamed over the target, so a reader (or a relaunch after a kill)
sees the old file or the new one, never a part. ``.npz`` files hold arrays keyed by "/"-joined paths
(`sparsejax.paths.flatten`); `read_npz` refuses anything else with one line.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from typing import Mapping

import numpy as np

from sparsejax.errors import FileFormatError


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8) to ``path`` through a temporary file and a rename."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                               prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], *,
             compressed: bool = False) -> None:
    """Writes ``arrays`` (name -> array) to an ``.npz`` at ``path``, atomically."""
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(
        buffer, **{name: np.asarray(a) for name, a in arrays.items()})
    write_atomic(path, buffer.getvalue())


def read_npz(path: str | os.PathLike, what: str, how: str) -> dict[str, np.ndarray]:
    """All arrays of the ``.npz`` at ``path``; ``FileFormatError`` if it is not one.

    ``what`` names the file in the message ("mask file"), ``how`` says how to make a good one.
    ``FileNotFoundError`` passes through for a missing file.
    """
    try:
        stored = np.load(os.fspath(path), allow_pickle=False)
        if not isinstance(stored, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array")
        with stored:
            return {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise FileFormatError(f"{what} {os.fspath(path)!r} is not a sparsejax .npz of arrays keyed "
                              f"by parameter path ({' '.join(str(e).split())[:80]}); {how}") from None
