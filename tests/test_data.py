"""sparsejax.data: the real tfds builders on tiny files in the official formats, splits, augmentation,
deterministic resumable iteration, per-host slicing, evaluation padding, and missing-dataset errors."""

from __future__ import annotations

import contextlib
import io
import itertools
import pathlib
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import zipfile

import chex
import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core.download import checksums

from sparsejax import data, errors
from sparsejax.data import augment, catalog, pipeline, sources, splits
from sparsejax.data.pipeline import Examples, Preprocessing

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
IDENTITY = Preprocessing(mean=(0.0,), std=(1 / 255,), pad=0, flip=False)  # normalize() returns the pixels


def _refused(address, *args, **kwargs):
    raise ConnectionRefusedError(f"no route to {address} in this test")


@contextlib.contextmanager
def _offline():
    """No TCP connection opens through ``socket.create_connection`` (the download host probe's)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "create_connection", _refused)
        yield


@pytest.fixture(autouse=True)
def offline():
    """Tests never probe the real download hosts: the machine is offline for them."""
    with _offline():
        yield


# ----------------------------------------------------------------------------- tiny official files


def _tar_gz(path, folder: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in files.items():
            member = tarfile.TarInfo(folder + name)
            member.size = len(content)
            archive.addfile(member, io.BytesIO(content))


def _cifar_records(labels: np.ndarray, images: np.ndarray) -> bytes:
    """The official record layout: label byte(s), then the R, G and B planes (32×32, row-major)."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return np.concatenate([labels.reshape(len(images), -1), planes], axis=1).astype(np.uint8).tobytes()


def _random_images(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """CIFAR-10 (100 train in 5 batches, 10 test) and CIFAR-100 (60 train, 6 test) written in the official
    binary formats, prepared by tfds's own builders from the manual directory on a machine without internet,
    with the archives' checksums registered in place of the real ones."""
    rng = np.random.default_rng(0)
    manual = tmp_path_factory.mktemp("manual")
    expected = {}

    train10 = Examples(_random_images(rng, 100), (np.arange(100) % 10).astype(np.int32))
    train10.images[0, :, :, 0], train10.images[0, :, :, 1], train10.images[0, :, :, 2] = 11, 22, 33
    test10 = Examples(_random_images(rng, 10), np.arange(10, dtype=np.int32))
    files = {f"data_batch_{i + 1}.bin": _cifar_records(train10.labels[20 * i:20 * (i + 1)],
                                                       train10.images[20 * i:20 * (i + 1)]) for i in range(5)}
    files["test_batch.bin"] = _cifar_records(test10.labels, test10.images)
    files["batches.meta.txt"] = "".join(f"class{i}\n" for i in range(10)).encode()
    _tar_gz(manual / "cifar-10-binary.tar.gz", "cifar-10-batches-bin/", files)
    expected["cifar10"] = (train10, test10)

    fine = np.array([0, 7, 42, 55, 99, 3])
    train100 = Examples(_random_images(rng, 60), fine[np.arange(60) % 6].astype(np.int32))
    test100 = Examples(_random_images(rng, 6), fine.astype(np.int32))
    coarse = lambda labels: np.asarray(labels) // 5  # noqa: E731
    _tar_gz(manual / "cifar-100-binary.tar.gz", "cifar-100-binary/", {
        "train.bin": _cifar_records(np.stack([coarse(train100.labels), train100.labels], 1), train100.images),
        "test.bin": _cifar_records(np.stack([coarse(test100.labels), test100.labels], 1), test100.images),
        "coarse_label_names.txt": "".join(f"coarse{i}\n" for i in range(20)).encode(),
        "fine_label_names.txt": "".join(f"fine{i}\n" for i in range(100)).encode(),
    })
    expected["cifar100"] = (train100, test100)

    data_dir = tmp_path_factory.mktemp("tfds")
    with _registered_checksums(manual), _offline():  # the archives in the manual dir are used, offline
        read = {name: sources.cifar(name, str(data_dir), str(manual)) for name in expected}
    return {"data_dir": str(data_dir), "manual_dir": str(manual), "expected": expected, "read": read}


@contextlib.contextmanager
def _registered_checksums(manual):
    """tfds's CIFAR builders accept the tiny archives in ``manual`` in place of the real ones."""
    url_infos = {CIFAR_URL + archive.name: checksums.compute_url_info(archive) for archive in manual.iterdir()}
    with pytest.MonkeyPatch.context() as patch:
        for builder in (tfds.image_classification.Cifar10, tfds.image_classification.Cifar100):
            patch.setattr(builder, "url_infos", url_infos)
        yield


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG")
    return buffer.getvalue()


def _decoded(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    """``tiny-imagenet-200.zip`` in the official layout: all 200 wnids, 10 train images for each of 3 classes
    (one grayscale), 6 labelled val images; prepared by the project's builder."""
    rng = np.random.default_rng(1)
    wnids = [f"n{i:08d}" for i in range(200)]
    used = [5, 17, 199]
    root = "tiny-imagenet-200/"
    files = {root + "wnids.txt": "\n".join(wnids) + "\n",
             root + "words.txt": "".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids))}
    train, test = [], []
    for label in used:
        wnid = wnids[label]
        files[f"{root}train/{wnid}/{wnid}_boxes.txt"] = ""
        for i in range(10):
            image = rng.integers(0, 256, (64, 64), np.uint8) if (label, i) == (17, 3) else _random_images(rng, 1, 64)[0]
            files[f"{root}train/{wnid}/images/{wnid}_{i}.JPEG"] = jpeg = _jpeg(image)
            train.append((_decoded(jpeg), label))
    annotations = []
    for i in range(6):
        label = used[i % 3]
        files[f"{root}val/images/val_{i}.JPEG"] = jpeg = _jpeg(_random_images(rng, 1, 64)[0])
        annotations.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63\n")
        test.append((_decoded(jpeg), label))
    files[root + "val/val_annotations.txt"] = "".join(annotations)
    files[root + "test/images/test_0.JPEG"] = _jpeg(_random_images(rng, 1, 64)[0])
    manual = tmp_path_factory.mktemp("tin_manual")
    with zipfile.ZipFile(manual / "tiny-imagenet-200.zip", "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    data_dir = str(tmp_path_factory.mktemp("tin_tfds"))
    return {"expected": [train, test], "read": sources.tiny_imagenet(data_dir, str(manual)),
            "data_dir": data_dir, "manual_dir": str(manual)}


def _sorted(examples: Examples) -> list[tuple[bytes, int]]:
    """The examples as (pixels, label) pairs, order-free (tfds stores records in its own order)."""
    return sorted((image.tobytes(), int(label)) for image, label in zip(*examples))


# ----------------------------------------------------------------------------- preparation


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_prepared_through_tfds_has_exact_contents(cifar, name):
    for read, expected in zip(cifar["read"][name], cifar["expected"][name]):
        assert read.images.dtype == np.uint8 and read.images.shape[1:] == (32, 32, 3)
        assert read.labels.dtype == np.int32
        assert _sorted(read) == _sorted(expected)  # CIFAR-100: the fine labels


def test_cifar_pixels_are_red_green_blue_planes(cifar):
    train, _ = cifar["read"]["cifar10"]
    planar = [image for image in train.images if (image[..., 0] == 11).all()]
    assert len(planar) == 1
    assert (planar[0][..., 1] == 22).all() and (planar[0][..., 2] == 33).all()


def test_tiny_imagenet_builder_reads_the_official_zip(tiny_imagenet):
    for read, expected in zip(tiny_imagenet["read"], tiny_imagenet["expected"]):
        assert read.images.shape[1:] == (64, 64, 3)
        assert _sorted(read) == sorted((image.tobytes(), label) for image, label in expected)
    grayscale = [image for image in tiny_imagenet["read"][0].images if (image[..., 0] == image[..., 2]).all()]
    assert len(grayscale) == 1 and (grayscale[0][..., 1] == grayscale[0][..., 0]).all()


def test_tiny_imagenet_is_prepared_and_everything_read_without_tensorflow(cifar, tiny_imagenet, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from sparsejax import data
        cifar = data.load("cifar10", batch_size=10, seed=0, data_dir={cifar["data_dir"]!r},
                          process_index=0, process_count=1)
        tin = data.load("tiny_imagenet", batch_size=9, seed=0, data_dir={str(tmp_path)!r},
                        manual_dir={tiny_imagenet["manual_dir"]!r}, process_index=0, process_count=1)
        next(iter(cifar.train)), next(iter(tin.train))
        assert "tensorflow" not in sys.modules, "tensorflow was imported"
        print(cifar.num_train, tin.num_train)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1].split() == ["90", "27"]


def test_digits_is_offline_with_a_fixed_stratified_test_split():
    train, test = sources.digits()
    assert train.images.shape == (1437, 8, 8, 1) and test.images.shape == (360, 8, 8, 1)
    assert train.images.dtype == np.uint8 and train.images.max() == 255
    np.testing.assert_array_equal(np.bincount(test.labels), np.bincount(sources.digits()[1].labels))
    assert np.abs(np.bincount(test.labels) / 360 - np.bincount(train.labels) / 1437).max() < 0.01


def test_digits_normalisation_constants_are_its_training_set_statistics():
    pixels = sources.digits()[0].images / 255
    np.testing.assert_allclose(catalog.DIGITS.mean, [pixels.mean()], atol=1e-4)
    np.testing.assert_allclose(catalog.DIGITS.std, [pixels.std()], atol=1e-4)


# ----------------------------------------------------------------------------- missing datasets


def test_missing_tiny_imagenet_zip_says_where_to_put_it(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match=r"tiny-imagenet-200\.zip in .*manual_here") as error:
        data.load("tiny_imagenet", batch_size=8, seed=0, data_dir=str(tmp_path),
                  manual_dir=str(tmp_path / "manual_here"))
    assert "\n" not in str(error.value)
    assert isinstance(error.value, errors.UserError) and isinstance(error.value, FileNotFoundError)


def _never_answers(release: threading.Event):
    def connect(address, *args, **kwargs):  # a black-holed network, or a resolver that does not answer
        release.wait(60)
        raise TimeoutError(f"{address} did not answer")
    return connect


@pytest.mark.parametrize("network", ["refuses", "never answers"])
def test_offline_cifar_fails_at_once_saying_where_to_put_the_archive(tmp_path, monkeypatch, network):
    def download(self, urls):
        raise AssertionError(f"tfds tried to download {urls} from an unreachable host")

    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download)
    release = threading.Event()
    if network == "never answers":
        monkeypatch.setattr(socket, "create_connection", _never_answers(release))
        monkeypatch.setattr(sources, "REACH_TIMEOUT_SECONDS", 0.5)
    start = time.monotonic()
    try:
        with pytest.raises(data.DatasetNotFoundError) as error:
            data.load("cifar10", batch_size=8, seed=0, data_dir=str(tmp_path), manual_dir=str(tmp_path / "by_hand"))
    finally:
        release.set()
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "www.cs.toronto.edu:443 cannot be reached" in message and "\n" not in message
    assert f"download {CIFAR_URL}cifar-10-binary.tar.gz elsewhere and put cifar-10-binary.tar.gz in " \
           f"{tmp_path / 'by_hand'}" in message
    assert "TensorFlow" not in message  # installed here
    assert isinstance(error.value, errors.UserError)


def test_download_host_probe_goes_through_the_environment_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert sources._first_hop(CIFAR_URL) == ("www.cs.toronto.edu", 443)
    monkeypatch.setenv("https_proxy", "http://user:secret@proxy.example:3128")
    assert sources._first_hop(CIFAR_URL) == ("proxy.example", 3128)
    monkeypatch.setenv("no_proxy", ".toronto.edu")
    assert sources._first_hop(CIFAR_URL) == ("www.cs.toronto.edu", 443)


def test_download_host_probe_says_whether_a_connection_opens(monkeypatch):
    opened = []

    class Connection:
        def close(self):
            opened.append(True)

    assert not sources._reachable("www.cs.toronto.edu", 443)  # offline fixture: refused
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: Connection())
    assert sources._reachable("www.cs.toronto.edu", 443) and opened == [True]


def test_failed_cifar_download_says_where_to_put_the_archive(tmp_path, monkeypatch):
    def offline(self, urls):
        raise requests.exceptions.ConnectionError("no internet")

    monkeypatch.setattr(sources, "_reachable", lambda host, port: True)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", offline)
    with pytest.raises(data.DatasetNotFoundError, match=r"put cifar-100-binary\.tar\.gz in .*downloads/manual"):
        data.load("cifar100", batch_size=8, seed=0, data_dir=str(tmp_path))


@pytest.mark.parametrize("archive", ["in the manual dir", "missing, offline"])
def test_preparing_cifar_without_tensorflow_names_the_extra(tmp_path, monkeypatch, archive):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` fails, find_spec finds nothing
    manual = tmp_path / "manual"
    if archive == "in the manual dir":
        manual.mkdir()
        (manual / "cifar-10-binary.tar.gz").write_bytes(b"not read")
    with pytest.raises(data.DatasetNotFoundError) as error:
        data.load("cifar10", batch_size=8, seed=0, data_dir=str(tmp_path), manual_dir=str(manual))
    message = str(error.value)
    assert 'preparing it once needs TensorFlow (training does not): pip install "sparsejax[cifar]" ' \
           '(from a checkout: pip install -e ".[cifar]")' in message and "\n" not in message
    assert ("cannot be reached" in message) == (archive == "missing, offline")


def test_cifar_prepared_as_tfrecord_asks_for_another_data_dir(cifar, tmp_path):
    builder = tfds.builder("cifar10", data_dir=str(tmp_path), file_format="tfrecord")
    with _registered_checksums(pathlib.Path(cifar["manual_dir"])):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=cifar["manual_dir"]))
    with pytest.raises(data.DatasetNotFoundError, match="prepared as tfrecord.*pass another data_dir"):
        data.load("cifar10", batch_size=8, seed=0, data_dir=str(tmp_path))


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        data.load("mnist", batch_size=8, seed=0)
    with pytest.raises(ValueError, match="not divisible by process_count 3"):
        data.load("digits", batch_size=8, seed=0, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="batch_size 5000"):
        data.load("digits", batch_size=5000, seed=0, process_index=0, process_count=1)


# ----------------------------------------------------------------------------- splits and loading


def test_validation_split_is_stratified_nine_to_one_disjoint_and_seeded():
    labels = np.arange(50000) % 10
    kept, held_out = splits.stratified_split(labels, splits.VALIDATION_FRACTION, seed=0)
    assert len(kept) == 45000 and len(held_out) == 5000
    assert not set(kept) & set(held_out) and len(set(kept) | set(held_out)) == 50000
    np.testing.assert_array_equal(np.bincount(labels[held_out]), np.full(10, 500))
    np.testing.assert_array_equal(held_out, splits.stratified_split(labels, 0.1, seed=0)[1])
    assert not np.array_equal(held_out, splits.stratified_split(labels, 0.1, seed=1)[1])


def _pixels(batch: dict, preprocessing: Preprocessing) -> np.ndarray:
    """Normalised images back to uint8 pixels."""
    pixels = (batch["image"] * np.asarray(preprocessing.std) + np.asarray(preprocessing.mean)) * 255
    return np.round(pixels).astype(np.uint8)


def test_load_cifar10_splits_and_metadata(cifar):
    ds = data.load("cifar10", batch_size=16, seed=0, data_dir=cifar["data_dir"], process_index=0, process_count=1)
    assert (ds.num_classes, ds.image_shape) == (10, (32, 32, 3))
    assert (ds.num_train, ds.num_validation, ds.num_test, ds.steps_per_epoch) == (90, 10, 10, 5)
    validation = [b for b in ds.validation]
    assert len(validation) == 1 and validation[0]["mask"].sum() == 10
    seen = Examples(_pixels(validation[0], catalog.CIFAR)[:10], validation[0]["label"][:10])
    pool = cifar["read"]["cifar10"][0]
    assert set(_sorted(seen)) <= set(_sorted(pool))
    np.testing.assert_array_equal(np.bincount(seen.labels), np.ones(10))  # stratified
    test = [b for b in ds.test][0]
    assert _sorted(Examples(_pixels(test, catalog.CIFAR)[:10], test["label"][:10])) == \
        _sorted(cifar["expected"]["cifar10"][1])


def test_load_tiny_imagenet_and_cifar100_metadata(cifar, tiny_imagenet):
    tin = data.load("tiny_imagenet", batch_size=9, seed=0, data_dir=tiny_imagenet["data_dir"],
                    manual_dir=tiny_imagenet["manual_dir"], process_index=0, process_count=1)
    assert (tin.num_classes, tin.image_shape, tin.num_train, tin.num_validation, tin.num_test) == \
        (200, (64, 64, 3), 27, 3, 6)
    assert next(iter(tin.train))["image"].shape == (9, 64, 64, 3)
    c100 = data.load("cifar100", batch_size=6, seed=0, data_dir=cifar["data_dir"], process_index=0, process_count=1)
    assert (c100.num_classes, c100.num_train, c100.num_validation, c100.num_test) == (100, 54, 6, 6)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", batch_size=128, seed=3, process_index=0, process_count=1)


def test_digits_metadata(digits):
    assert (digits.num_classes, digits.image_shape) == (10, (8, 8, 1))
    assert (digits.num_train, digits.num_validation, digits.num_test) == (1293, 144, 360)
    assert digits.steps_per_epoch == 1293 // 128


def _take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


# ----------------------------------------------------------------------------- train iteration


def test_train_batches_have_the_documented_types(digits):
    batch = next(iter(digits.train))
    assert batch.keys() == {"image", "label"}
    assert batch["image"].shape == (128, 8, 8, 1) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (128,) and batch["label"].dtype == np.int32


def test_train_iteration_is_deterministic_and_seeded(digits):
    first = _take(iter(digits.train), 12)  # crosses an epoch boundary (10 steps per epoch)
    chex.assert_trees_all_equal(first, _take(iter(digits.train), 12))
    other = data.load("digits", batch_size=128, seed=4, process_index=0, process_count=1)
    assert not np.array_equal(first[0]["label"], next(iter(other.train))["label"])


def test_resumed_iterator_sees_the_batches_of_an_uninterrupted_run(digits):
    uninterrupted = iter(digits.train)
    _take(uninterrupted, 7)
    state = uninterrupted.get_state()
    expected = _take(uninterrupted, 6)
    resumed = iter(data.load("digits", batch_size=128, seed=3, process_index=0, process_count=1).train)
    resumed.set_state(state)
    chex.assert_trees_all_equal(_take(resumed, 6), expected)


def _batches(examples: Examples, preprocessing: Preprocessing, process_index=0, process_count=1, seed=0):
    return pipeline.TrainBatches(examples, 8, seed, preprocessing, pipeline.host_rows(8, process_index, process_count))


def _numbered(n: int) -> Examples:
    """Example i is an image filled with i (mod 256) and labelled i."""
    images = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, 4, 4, 1))
    return Examples(np.ascontiguousarray(images), np.arange(n, dtype=np.int32))


def test_each_epoch_visits_every_example_once_in_its_own_order():
    batches = _batches(_numbered(43), IDENTITY)  # 5 full batches of 8, 3 examples dropped per epoch
    assert batches.steps_per_epoch == 5
    epochs = [np.concatenate([batches(step)["label"] for step in range(e * 5, (e + 1) * 5)]) for e in range(2)]
    for labels in epochs:
        assert len(set(labels)) == 40
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(epochs[0], pipeline.epoch_order(43, 0, 0)[:40])
    np.testing.assert_array_equal(batches(0)["image"][:, 0, 0, 0], batches(0)["label"])  # labels follow images


@pytest.mark.parametrize("preprocessing", [IDENTITY, catalog.CIFAR])
def test_hosts_get_disjoint_slices_that_make_up_the_global_batch(preprocessing):
    examples = _numbered(100) if preprocessing is IDENTITY else Examples(_random_images(np.random.default_rng(2), 100),
                                                                         np.arange(100, dtype=np.int32))
    single = _batches(examples, preprocessing)
    hosts = [_batches(examples, preprocessing, index, 4) for index in range(4)]
    for step in (0, 13):
        parts = [host(step) for host in hosts]
        assert all(part["label"].shape == (2,) for part in parts)
        assert len(set(np.concatenate([part["label"] for part in parts]))) == 8
        chex.assert_trees_all_equal({k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, single(step))


def test_eval_batches_are_padded_and_masked(digits):
    test = list(digits.test)
    assert len(test) == 3  # 360 = 128 + 128 + 104
    assert [int(b["mask"].sum()) for b in test] == [128, 128, 104]
    last = test[-1]
    assert last["image"].shape == (128, 8, 8, 1) and last["mask"].dtype == bool
    assert not last["mask"][104:].any() and (last["image"][104:] == 0).all() and (last["label"][104:] == 0).all()
    _, expected = sources.digits()
    pixels = np.concatenate([_pixels(b, catalog.DIGITS)[b["mask"]] for b in test])
    np.testing.assert_array_equal(pixels, expected.images)
    np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in test]), expected.labels)
    chex.assert_trees_all_equal(list(digits.test), test)  # iterating again gives the same pass


def test_eval_batches_per_host_cover_each_example_once():
    examples = _numbered(21)
    hosts = [pipeline.EvalBatches(examples, 8, IDENTITY, pipeline.host_rows(8, i, 2)) for i in range(2)]
    assert len(hosts[0]) == 3
    labels = [b["label"][b["mask"]] for index in range(3) for b in (host(index) for host in hosts)]
    np.testing.assert_array_equal(np.concatenate(labels), np.arange(21))


# ----------------------------------------------------------------------------- augmentation


def test_crop_and_flip_matches_pad_then_slice_then_mirror():
    rng = np.random.default_rng(0)
    images = _random_images(rng, 64)
    choices = augment.draw(rng, 64, pad=4, flip=True)
    out = augment.crop_and_flip(images, choices, pad=4)
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for image, (row, column), flip, padded_image in zip(out, choices.offsets, choices.flips, padded):
        expected = padded_image[row:row + 32, column:column + 32]
        np.testing.assert_array_equal(image, expected[:, ::-1] if flip else expected)
    assert 0 < choices.flips.sum() < 64 and choices.offsets.min() >= 0 and choices.offsets.max() <= 8


def _normalised_crops(image: np.ndarray, preprocessing: Preprocessing) -> dict[tuple[int, int, bool], np.ndarray]:
    """Every (H, W) window of ``image`` zero-padded by ``preprocessing.pad``, as is and mirrored, normalised:
    ``{(row, column, mirrored): window}``."""
    height, width, _ = image.shape
    pad = preprocessing.pad
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    crops = {}
    for row, column in itertools.product(range(2 * pad + 1), repeat=2):
        window = padded[row:row + height, column:column + width]
        crops[row, column, False], crops[row, column, True] = window, window[:, ::-1]
    return {key: augment.normalize(crop, preprocessing.mean, preprocessing.std) for key, crop in crops.items()}


def test_train_batches_are_crops_of_the_padded_images_some_shifted_some_flipped():
    """Each train image is exactly one window of its zero-padded original, mirrored or not, normalised; over a
    batch most are shifted and some, not all, mirrored."""
    n, pad = 32, catalog.CIFAR.pad
    examples = Examples(_random_images(np.random.default_rng(3), n), np.arange(n, dtype=np.int32))
    batches = pipeline.TrainBatches(examples, n, 0, catalog.CIFAR, pipeline.host_rows(n, 0, 1))
    batch = next(iter(pipeline.train_dataset(batches)))
    chosen = []
    for image, label in zip(batch["image"], batch["label"]):
        crops = _normalised_crops(examples.images[label], catalog.CIFAR)
        matches = [key for key, crop in crops.items() if np.array_equal(image, crop)]
        assert len(matches) == 1, f"example {label}: {len(matches)} windows of its padded image match"
        chosen.append(matches[0])
    shifted = sum((row, column) != (pad, pad) for row, column, _ in chosen)
    mirrored = sum(flip for _, _, flip in chosen)
    assert shifted > n // 2 and 0 < mirrored < n, (shifted, mirrored)


def test_augmentation_draws_are_uniform_and_flip_half_the_time():
    choices = augment.draw(np.random.default_rng(0), 20000, pad=4, flip=True)
    assert abs(choices.flips.mean() - 0.5) < 0.02
    np.testing.assert_array_equal(np.unique(choices.offsets), np.arange(9))
    assert not augment.draw(np.random.default_rng(0), 100, pad=1, flip=False).flips.any()


def test_normalize_is_per_channel():
    pixels = np.array([[[[0, 255, 51]]]], np.uint8)
    out = augment.normalize(pixels, mean=(0.5, 0.5, 0.2), std=(0.5, 0.25, 0.1))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0, 0], [-1.0, 2.0, 0.0], atol=1e-6)
