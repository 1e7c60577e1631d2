"""The training pipeline end to end: `python -m launch` on the embedded digits data."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import chex
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sparsejax import paths

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.num_epochs=4", "--config.batch_size=64", "--config.progress=False"]
# Slow: long runs (CI runs them with --runslow), and bad input that takes the same one-line path as a
# faster case (the checks themselves are tested in process, tests/test_train_modules.py).
SLOW = pytest.mark.slow


def env(devices: int = 1) -> dict[str, str]:
    e = dict(os.environ)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["JAX_PLATFORMS"] = "cpu"
    return e


def launch(*args: str, devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", *args], cwd=REPO, env=env(devices),
                          capture_output=True, text=True, timeout=timeout)


def final_state(workdir: pathlib.Path) -> dict:
    """The last checkpoint's state as numpy arrays."""
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore((workdir / "checkpoints" / str(step) / "state").absolute())


def flat(tree) -> dict:
    return {k: np.asarray(v) for k, v in paths.flatten(tree).items()}


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> pathlib.Path:
    """An uninterrupted run of the kill test's config."""
    workdir = tmp_path_factory.mktemp("whole")
    result = launch(KILLED, f"--workdir={workdir}", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def assert_same_run(a: pathlib.Path, b: pathlib.Path) -> None:
    """Final checkpoints bit-identical, and the same metrics and summary."""
    chex.assert_trees_all_equal(flat(final_state(a)), flat(final_state(b)))
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    assert json.loads((a / "summary.json").read_text()) == json.loads((b / "summary.json").read_text())


def resumed_from(result: subprocess.CompletedProcess) -> int:
    found = re.search(r"resuming from step (\d+)", result.stdout)
    assert found, result.stdout[-2000:]
    return int(found.group(1))


KILLED = "--config=configs/quickstart.py:variant=tost,epochs=4"  # ghosts removed at step 40
STEPS_PER_EPOCH = 20  # digits: 1,293 training images in batches of 64
TOTAL = 4 * STEPS_PER_EPOCH


@SLOW
def test_kill_and_resume_is_bit_identical(tmp_path, whole):
    """Stopped in its second epoch (after the first checkpoint), a second launch on the same workdir
    is refused; killed, a relaunch resumes from that checkpoint and ends as the uninterrupted run."""
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "launch", KILLED, f"--workdir={killed}", *TINY],
                            cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = killed / "metrics.jsonl", time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:  # past the first checkpoint
        if metrics.exists() and any(json.loads(line)["step"] > STEPS_PER_EPOCH
                                    for line in metrics.read_text().splitlines()[:-1]):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGSTOP)  # frozen: it holds the workdir's lock and cannot finish
    assert proc.poll() is None, "the run ended before it could be stopped"
    try:
        second = launch(KILLED, f"--workdir={killed}", *TINY)
        line = one_line_error(second)
        assert "in use by process" in line and str(proc.pid) in line and str(killed) in line, line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    resumed = launch(KILLED, f"--workdir={killed}", *TINY)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert STEPS_PER_EPOCH <= resumed_from(resumed) < TOTAL
    assert_same_run(whole, killed)
    assert not any(paths.is_ghost(k) for k in flat(final_state(killed))), "ghosts must be gone"


@SLOW
def test_damaged_latest_checkpoint_resumes_from_the_one_before(tmp_path, whole):
    """Garbage in every file of the newest checkpoint: the relaunch says so, sets it aside, resumes
    from the one before and ends as the uninterrupted run; with no readable one it stops."""
    workdir = tmp_path / "run"
    shutil.copytree(whole, workdir)
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [3 * STEPS_PER_EPOCH, TOTAL]

    def damage(step: int) -> None:
        for f in (workdir / "checkpoints" / str(step)).rglob("*"):
            if f.is_file():
                f.write_bytes(gzip.compress(b"not a checkpoint"))

    damage(TOTAL)
    result = launch(KILLED, f"--workdir={workdir}", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checkpoint step {TOTAL} is unreadable" in result.stdout, result.stdout[-2000:]
    assert resumed_from(result) == 3 * STEPS_PER_EPOCH
    assert (workdir / "damaged_checkpoints" / str(TOTAL)).is_dir()
    assert_same_run(whole, workdir)

    for step in steps:
        damage(step)
    metrics = (workdir / "metrics.jsonl").read_text()
    line = one_line_error(launch(KILLED, f"--workdir={workdir}", *TINY))
    assert "no checkpoint" in line and "can be read" in line, line
    assert (workdir / "metrics.jsonl").read_text() == metrics, "nothing may be overwritten"


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """Asserts the launcher failed with exactly one line on stderr and no traceback; returns it."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result.stdout[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["--config.mask.sparsityy=0.5"], "sparsityy"),  # flags
    (["--config=configs/no_such_config.py"], "no_such_config.py"),  # config files
    (["--config=configs/quickstart.py:variant=vanilla,epochz=3"], "epochz"),
    (["--config.mode=sweep"], "mode"),  # build.check
    (["--config.data.name=cifar10", "--config.data.data_dir=/nonexistent/tfds"],
     "cifar-10-binary.tar.gz"),  # data
    pytest.param(["--config.mask.method=file", "--config.mask.file=configs/base.py"], "not a sparsejax",
                 marks=SLOW),
    pytest.param(["--config.optimizer.learning_rate=1e9"], "no checkpoint was written yet",
                 marks=SLOW),
    pytest.param(["--config.mask.sparsity=1.5"], "sparsity", marks=SLOW),
    pytest.param(["--config.model.name=resnet9"], "resnet9", marks=SLOW),
    pytest.param(["--config.data.name=imagenet"], "imagenet", marks=SLOW),
    pytest.param(["--config.mask.method=file", "--config.mask.file=/nonexistent/mask.npz"],
                 "mask.npz", marks=SLOW),
])
def test_bad_config_fails_with_one_line(tmp_path, args, words):
    result = launch("--config=configs/quickstart.py:variant=vanilla", f"--workdir={tmp_path}/w",
                    *TINY, *args)
    assert words in one_line_error(result)


def test_no_config_fails_with_one_line():
    assert "no config given" in one_line_error(launch())


@pytest.mark.parametrize("error", [pytest.param("ValueError", marks=SLOW), "KeyError"])
def test_a_bug_keeps_its_traceback(tmp_path, error):
    """Only sparsejax's own UserError becomes one line; anything else is a bug and shows where."""
    code = (f"import runpy, sparsejax.train as t\n"
            f"def bug(*a): raise {error}('injected bug')\n"
            "t.train_and_evaluate = bug\n"
            "runpy.run_module('launch', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, "--config=configs/quickstart.py:variant=vanilla",
                             f"--workdir={tmp_path}"], cwd=REPO, env=env(), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "injected bug" in result.stderr, result.stderr[-2000:]


@SLOW
def test_missing_dataset_says_how_to_get_it(tmp_path):
    result = launch("--config=configs/quickstart.py:variant=vanilla", f"--workdir={tmp_path}/w",
                    *TINY, "--config.data.name=tiny_imagenet", f"--config.data.data_dir={tmp_path}",
                    f"--config.data.manual_dir={tmp_path}/manual")
    assert "tiny-imagenet-200.zip" in one_line_error(result)


@SLOW
def test_mask_file_of_another_model_is_refused(tmp_path):
    import jax
    import jax.numpy as jnp
    from sparsejax import masks
    bad = {"params": {"Dense_0": {"kernel": jnp.ones((3, 3), bool)}}}
    masks.save(tmp_path / "other.npz", bad)
    del jax
    result = launch("--config=configs/quickstart.py:variant=vanilla", f"--workdir={tmp_path}/w",
                    *TINY, "--config.mask.method=file", f"--config.mask.file={tmp_path}/other.npz")
    assert "other.npz" in one_line_error(result)


@pytest.mark.slow
def test_unwritable_workdir_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    result = launch("--config=configs/quickstart.py:variant=vanilla",
                    f"--workdir={tmp_path}/file/run", *TINY)
    assert "not writable" in one_line_error(result)


@pytest.mark.slow
def test_workdir_of_another_config_is_refused_and_kept(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"name": "something else"}))
    (workdir / "checkpoints").mkdir()
    result = launch("--config=configs/quickstart.py:variant=vanilla", f"--workdir={workdir}", *TINY)
    assert "different config" in one_line_error(result)
    assert json.loads((workdir / "config.json").read_text()) == {"name": "something else"}
    assert (workdir / "checkpoints").is_dir()


# Shared by the 8-device and 2-process tests. ToST's smooth ghost Swish and a small learning rate keep
# SGD from amplifying the different float summation order of the shards: with ReLU at 90% sparsity
# (the vanilla variant) 1 vs 4 devices in one process already end with BN biases ~70% apart after 40
# steps (measured), so no tolerance could tell a sharding bug from summation order there.
PARALLEL = ["--config=configs/quickstart.py:variant=tost,epochs=2", "--config.num_epochs=2",
            "--config.batch_size=128", "--config.progress=False",
            "--config.optimizer.learning_rate=0.01"]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory) -> pathlib.Path:
    """The workdir of the PARALLEL run in one process on one device."""
    workdir = tmp_path_factory.mktemp("one_device")
    result = launch(*PARALLEL, f"--workdir={workdir}", devices=1)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@SLOW
def test_eight_devices_match_one(tmp_path, one_device):
    eight = launch(*PARALLEL, f"--workdir={tmp_path}", devices=8)
    assert eight.returncode == 0, eight.stderr[-3000:]
    a, b = flat(final_state(one_device)), flat(final_state(tmp_path))
    assert a.keys() == b.keys()
    for key in a:
        if a[key].dtype == bool:  # masks: identical
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        elif key.startswith(("/params", "/batch_stats")):  # not momentum: gradients cancel
            assert_close(a[key], b[key], key)


def assert_close(a: np.ndarray, b: np.ndarray, key: str) -> None:
    """Equal up to float32 summation order, per tensor: rms(a − b) ≤ 5e-3 · rms(a) + 2e-4."""
    if not np.issubdtype(a.dtype, np.floating):  # masks, counters, empty optax states
        np.testing.assert_array_equal(a, b, err_msg=key)
        return
    rms = lambda x: float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))  # noqa: E731
    assert rms(a - b) <= 5e-3 * rms(a) + 2e-4, (key, rms(a - b), rms(a))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@SLOW
def test_two_processes_match_one(tmp_path, one_device):
    """The run as a 2-host job (2 devices each, gloo collectives on localhost) equals 1 process × 1
    device. Checks params and batch_stats (``final_variables.npz``: orbax checkpoints written by 2
    processes cannot be restored by one without the target's sharding), masks' per-layer densities,
    step and test accuracy."""
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "launch", *PARALLEL, f"--workdir={tmp_path}",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=REPO, env=env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    sa = json.loads((one_device / "summary.json").read_text())
    sb = json.loads((tmp_path / "summary.json").read_text())
    assert sb["step"] == sa["step"]
    assert sb["sparsity"] == sa["sparsity"]
    assert sb["layer_densities"] == sa["layer_densities"]
    with np.load(one_device / "final_variables.npz") as a, \
            np.load(tmp_path / "final_variables.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            assert_close(a[key], b[key], key)
    assert abs(sb["final_test_accuracy"] - sa["final_test_accuracy"]) <= 0.01
