"""Where the examples come from: tfds builders prepared in array_record format, read without TensorFlow,
and scikit-learn's digits.

Each reader returns ``(training set, test set)`` as in-memory ``Examples``; the 9:1 validation split is
made later, in the same way for every dataset.
"""

from __future__ import annotations

import importlib.util
import socket
import threading
import urllib.parse
import urllib.request

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from sklearn import datasets as sklearn_datasets

from sparsejax.data import splits
from sparsejax.data.errors import DatasetNotFoundError
from sparsejax.data.pipeline import Examples
from sparsejax.data.tiny_imagenet import TinyImagenet

DIGITS_TEST_FRACTION = 0.2  # digits has no official test split: a fixed, stratified 20%
DIGITS_TEST_SEED = 0

_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
_CIFAR_ARCHIVES = {"cifar10": "cifar-10-binary.tar.gz", "cifar100": "cifar-100-binary.tar.gz"}
REACH_TIMEOUT_SECONDS = 3.0  # to find the download host before downloading
# TensorFlow prepares CIFAR (tfds's builders); it is the extra "cifar" of setup.py.
TENSORFLOW_EXTRA = 'pip install "sparsejax[cifar]" (from a checkout: pip install -e ".[cifar]")'


def digits() -> tuple[Examples, Examples]:
    """scikit-learn's digits (1,797 images, 8×8×1, values 0–16 scaled to 0–255), split into a fixed
    stratified test set of 20% (seed 0) and the rest; offline, it ships inside scikit-learn."""
    bunch = sklearn_datasets.load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)[..., None]
    examples = Examples(images, bunch.target.astype(np.int32))
    train, test = splits.stratified_split(examples.labels, DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    return examples.take(train), examples.take(test)


def cifar(name: str, data_dir: str | None, manual_dir: str | None) -> tuple[Examples, Examples]:
    """CIFAR-10 or CIFAR-100 (fine labels) through tfds's own builder: downloaded and prepared on first use
    (needs TensorFlow), or prepared offline from the official archive placed in the manual directory."""
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared() and builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise DatasetNotFoundError(
            f"{name} in {builder.data_dir} is prepared as {builder.info.file_format.value}, but sparsejax reads "
            "array_record files (no TensorFlow): pass another data_dir, where it will be prepared again")
    builder = tfds.builder(name, data_dir=data_dir, file_format=tfds.core.FileFormat.ARRAY_RECORD)
    archive = _CIFAR_ARCHIVES[name]
    _prepare(builder, manual_dir, archive, _CIFAR_URL + archive, downloadable=True)
    return read(builder, "train"), read(builder, "test")


def tiny_imagenet(data_dir: str | None, manual_dir: str | None) -> tuple[Examples, Examples]:
    """TinyImageNet-200 prepared (without TensorFlow) from ``tiny-imagenet-200.zip`` in the manual
    directory; its official ``val`` set is the test set."""
    builder = TinyImagenet(data_dir=data_dir, file_format=tfds.core.FileFormat.ARRAY_RECORD)
    _prepare(builder, manual_dir, TinyImagenet.ARCHIVE, TinyImagenet.URL, downloadable=False)
    return read(builder, "train"), read(builder, "validation")


def read(builder: tfds.core.DatasetBuilder, split: str) -> Examples:
    """All of a prepared split, read through tfds's data source (array_record; no TensorFlow)."""
    source = builder.as_data_source(split=split)
    records = source.__getitems__(range(len(source)))
    return Examples(np.stack([r["image"] for r in records]), np.array([r["label"] for r in records], np.int32))


def _prepare(builder: tfds.core.DatasetBuilder, manual_dir: str | None, archive: str, url: str,
             downloadable: bool) -> None:
    """Prepares ``builder`` unless it is prepared, from ``archive`` in the manual directory (default
    ``<data_dir>/downloads/manual``) or, if ``downloadable`` and the download host answers, from a download.
    tfds's downloadable builders extract archives with TensorFlow, so those need it to prepare."""
    if builder.is_prepared():
        return
    manual = epath.Path(manual_dir) if manual_dir else builder.data_dir_root / "downloads" / "manual"
    not_prepared = f"{builder.name} is not prepared in {builder.data_dir_root}"
    put_it = f"put {archive} in {manual} (or pass manual_dir=)"
    problems = []
    if not (manual / archive).exists():
        if not downloadable:
            raise DatasetNotFoundError(f"{not_prepared}: download {url} and {put_it}")
        host, port = _first_hop(url)
        if not _reachable(host, port):
            problems.append(f"{host}:{port} cannot be reached from here, so download {url} elsewhere and {put_it}")
    if downloadable and importlib.util.find_spec("tensorflow") is None:
        problems.append(f"preparing it once needs TensorFlow (training does not): {TENSORFLOW_EXTRA}")
    if problems:
        raise DatasetNotFoundError(f"{not_prepared}: {'; '.join(problems)}")
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    except OSError as error:
        raise DatasetNotFoundError(
            f"{not_prepared}: download {url} and {put_it} ({type(error).__name__} while downloading)") from error


def _first_hop(url: str) -> tuple[str, int]:
    """The (host, port) a download of ``url`` connects to: the proxy the environment sets for it, else its host."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _reachable(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``REACH_TIMEOUT_SECONDS``, name resolution
    included, so that an offline machine learns it at once rather than after tfds's retries (minutes)."""
    connected, finished = [], threading.Event()

    def connect() -> None:  # in a daemon thread: a socket timeout does not bound name resolution
        try:
            socket.create_connection((host, port), timeout=REACH_TIMEOUT_SECONDS).close()
            connected.append(True)
        except OSError:
            pass
        finally:
            finished.set()

    threading.Thread(target=connect, daemon=True).start()
    finished.wait(REACH_TIMEOUT_SECONDS)
    return bool(connected)
