"""Fault injection on the run folder (plumbing/runfiles.py): a kill at every write step of an epoch, then
--resume, ends with the files of an uninterrupted run; two runs on one folder; full and read-only disks;
foreign and damaged files. Each case ends in the correct result or one line and a non-zero exit."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from plumbing import runfiles
from conftest import write_mnist_files
from test_bad_inputs import without_permission_override

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--units", "16", "--epochs", "2", "--train-size", "200", "--batch-size", "50", "--seed", "7"]
VOLATILE = {"seconds", "command"}  # wall-clock time and the command line differ between runs

pytestmark = pytest.mark.slow


def make_mnist(folder, seed):
    write_mnist_files(folder, n_train=300, n_test=60, seed=seed)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mnist(str(tmp_path_factory.mktemp("mnist")), seed=0)


def run(args, env=None, preexec_fn=None, timeout=300):
    environment = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, "mnist.py")] + args, capture_output=True,
                          text=True, env=environment, preexec_fn=preexec_fn, timeout=timeout)


def error_lines(result):
    """stderr without Theano's warnings and the data loader's one-line notes (about the generated files)."""
    return [line for line in result.stderr.splitlines()
            if line.strip() and "WARNING (theano" not in line and not line.startswith("note: ")]


def snapshot(folder):
    """Everything a finished run leaves, without wall-clock values: results, log rows, parameter arrays."""
    with open(os.path.join(folder, "results.json")) as f:
        results = {k: v for k, v in json.load(f).items() if k not in VOLATILE}
    with open(os.path.join(folder, "log.jsonl")) as f:
        log = [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in f]
    with np.load(os.path.join(folder, "mnist_parameters.npz")) as params:
        arrays = [params[f"arr_{i}"].tobytes() for i in range(len(params.files))]
    leftovers = sorted(name for name in os.listdir(folder) if name.startswith("."))
    return results, log, arrays, leftovers


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run, and the write steps it passes (traced)."""
    out = str(tmp_path_factory.mktemp("reference") / "run")
    trace = out + ".trace"
    result = run(FLAGS + ["--data-dir", data, "--out", out], env={"BINARYNET_FAULT_TRACE": trace})
    assert result.returncode == 0, result.stderr
    with open(trace) as f:
        points = f.read().split()
    return snapshot(out), points


def test_the_trace_covers_every_write_of_an_epoch(reference):
    _, points = reference
    for name in ("checkpoint.npz", "results.json", "log.jsonl", ".mnist_parameters.npz.epoch1"):
        assert points.count(name + ":written") >= 1 and points.count(name + ":renamed") >= 1, (name, points)
    assert points.count("parameters:promoted") >= 1


def kill_points(points):
    """(point, n): the n-th time each traced point is reached."""
    seen, out = {}, []
    for point in points:
        seen[point] = seen.get(point, 0) + 1
        out.append((point, seen[point]))
    return out


def test_a_kill_at_any_write_step_then_resume_gives_the_uninterrupted_files(data, reference, tmp_path):
    expected, points = reference
    for i, (point, n) in enumerate(kill_points(points)):
        out = str(tmp_path / f"run{i}")
        killed = run(FLAGS + ["--data-dir", data, "--out", out], env={"BINARYNET_FAULT": f"{point}:{n}"})
        assert killed.returncode == -signal.SIGKILL, (point, n, killed.stderr)
        resumed = run(FLAGS + ["--data-dir", data, "--out", out, "--resume"])
        assert resumed.returncode == 0, (point, n, resumed.stderr)
        assert snapshot(out) == expected, f"kill at {point} (time {n}) then --resume"


def test_a_second_run_on_a_busy_folder_is_refused_and_the_first_is_unharmed(data, reference, tmp_path):
    out = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=ROOT, BINARYNET_FAULT_TRACE=str(tmp_path / "trace"))
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "mnist.py")] + FLAGS +
                             ["--data-dir", data, "--out", out], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(out, "lock")) and time.time() < deadline:
        time.sleep(0.05)
    second = run(FLAGS[:-1] + ["8", "--method", "bc-det", "--data-dir", data, "--out", out, "--resume"])
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert second.returncode == 2
    assert len(error_lines(second)) == 1 and f"is in use by process {first.pid}" in second.stderr
    assert snapshot(out) == reference[0]


def test_a_killed_run_leaves_no_lock_that_blocks_the_resume(data, reference, tmp_path):
    out = str(tmp_path / "run")
    killed = run(FLAGS + ["--data-dir", data, "--out", out], env={"BINARYNET_FAULT": "log.jsonl:renamed:1"})
    assert killed.returncode == -signal.SIGKILL
    assert os.path.exists(os.path.join(out, "lock"))
    resumed = run(FLAGS + ["--data-dir", data, "--out", out, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert snapshot(out) == reference[0]


def test_leftover_temporary_files_are_removed_at_start(data, reference, tmp_path):
    out = str(tmp_path / "run")
    killed = run(FLAGS + ["--data-dir", data, "--out", out], env={"BINARYNET_FAULT": "checkpoint.npz:written:2"})
    assert killed.returncode == -signal.SIGKILL
    assert any(name.endswith(".tmp") for name in os.listdir(out))
    assert run(FLAGS + ["--data-dir", data, "--out", out, "--resume"]).returncode == 0
    assert not [name for name in os.listdir(out) if name.startswith(".")]


def test_a_full_disk_during_an_epoch_is_one_line_and_resume_finishes_the_run(data, reference, tmp_path):
    """--out on a 100 kB tmpfs: the staged parameters fit, the first checkpoint does not (ENOSPC)."""
    out = tmp_path / "disk"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(out)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.fail("cannot mount a small tmpfs (needs root): " + mounted.stderr.strip())
    try:
        full = run(FLAGS + ["--data-dir", data, "--out", str(out / "run")])
        assert full.returncode == 2, full.stderr
        lines = error_lines(full)
        assert len(lines) == 1 and "No space left on device" in lines[0], full.stderr
        assert "rerun with --resume" in lines[0]
        assert not [name for name in os.listdir(str(out / "run")) if name.endswith(".tmp")]
        subprocess.run(["mount", "-o", "remount,size=10m", str(out)], check=True)
        resumed = run(FLAGS + ["--data-dir", data, "--out", str(out / "run"), "--resume"])
        assert resumed.returncode == 0, resumed.stderr
        assert snapshot(str(out / "run")) == reference[0]
    finally:
        subprocess.run(["umount", str(out)])


def test_a_read_only_folder_is_one_line_before_any_work(data, tmp_path):
    out = tmp_path / "readonly"
    out.mkdir()
    os.chmod(str(out), 0o555)
    result = run(FLAGS + ["--data-dir", data, "--out", str(out)], preexec_fn=without_permission_override)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and f"cannot write to {out}" in lines[0], result.stderr
    assert "Loading MNIST" not in result.stdout


@pytest.mark.parametrize("files", [["results.json"], ["log.jsonl"], ["mnist_parameters.npz"]])
def test_a_folder_with_files_it_would_overwrite_but_no_checkpoint_is_refused(data, tmp_path, files):
    out = tmp_path / "run"
    out.mkdir()
    for name in files:
        (out / name).write_text("someone else's\n")
    for extra in ([], ["--resume"]):
        result = run(FLAGS + ["--data-dir", data, "--out", str(out)] + extra)
        assert result.returncode == 2
        assert len(error_lines(result)) == 1 and "nothing is overwritten" in result.stderr
    assert all((out / name).read_text() == "someone else's\n" for name in files)


def test_a_finished_run_is_kept_unless_resumed(data, reference, tmp_path):
    out = str(tmp_path / "run")
    assert run(FLAGS + ["--data-dir", data, "--out", out]).returncode == 0
    again = run(FLAGS + ["--data-dir", data, "--out", out])
    assert again.returncode == 2 and "add --resume" in again.stderr
    resumed = run(FLAGS + ["--data-dir", data, "--out", out, "--resume"])
    assert resumed.returncode == 0 and "Resuming after epoch 2 of 2" in resumed.stdout
    assert snapshot(out) == reference[0]
    os.remove(os.path.join(out, "checkpoint.npz"))  # a finished run whose checkpoint was deleted
    result = run(FLAGS + ["--data-dir", data, "--out", out, "--resume"])
    assert result.returncode == 2 and "nothing is overwritten" in result.stderr


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_is_one_line(data, tmp_path, damage):
    out = str(tmp_path / "run")
    assert run(FLAGS + ["--data-dir", data, "--out", out], env={"BINARYNET_FAULT": "log.jsonl:renamed:1"}
               ).returncode == -signal.SIGKILL
    path = os.path.join(out, "checkpoint.npz")
    blob = bytearray(open(path, "rb").read())
    if damage == "truncate":
        blob = blob[:len(blob) // 2]
    else:
        for i in range(len(blob) // 3, len(blob) // 3 + 64):
            blob[i] ^= 0xFF
    open(path, "wb").write(bytes(blob))
    result = run(FLAGS + ["--data-dir", data, "--out", out, "--resume"])
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and "checkpoint" in lines[0] and "damaged" in lines[0], result.stderr


def test_resume_with_other_data_files_is_refused(data, tmp_path):
    out = str(tmp_path / "run")
    assert run(FLAGS + ["--data-dir", data, "--out", out], env={"BINARYNET_FAULT": "log.jsonl:renamed:1"}
               ).returncode == -signal.SIGKILL
    other = make_mnist(str(tmp_path / "other"), seed=1)
    result = run(FLAGS + ["--data-dir", other, "--out", out, "--resume"])
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and "other data files" in result.stderr


def test_resume_with_other_settings_is_refused(data, tmp_path):
    out = str(tmp_path / "run")
    assert run(FLAGS + ["--data-dir", data, "--out", out], env={"BINARYNET_FAULT": "log.jsonl:renamed:1"}
               ).returncode == -signal.SIGKILL
    result = run(FLAGS + ["--data-dir", data, "--out", out, "--resume", "--method", "float"])
    assert result.returncode == 2 and "other settings" in result.stderr


def test_sigterm_keeps_the_finished_epochs(data, reference, tmp_path):
    out = str(tmp_path / "run")
    terminated = run(FLAGS + ["--data-dir", data, "--out", out], env={"BINARYNET_FAULT": "log.jsonl:renamed:1:TERM"})
    assert terminated.returncode == 143, terminated.stderr
    assert "terminated: the last finished epoch is kept" in terminated.stderr
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["epochs_done"] == 1
    assert run(FLAGS + ["--data-dir", data, "--out", out, "--resume"]).returncode == 0
    assert snapshot(out) == reference[0]


def test_nan_is_never_written_as_a_result(tmp_path):
    path = str(tmp_path / "results.json")
    runfiles.atomic_write_json(path, {"test_error": float("nan"), "loss": np.float32("inf"), "ok": 1.5})
    with open(path) as f:
        assert json.loads(f.read()) == {"test_error": None, "loss": None, "ok": 1.5}
