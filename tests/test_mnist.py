"""mnist.py end to end on small generated data: every method learns, a run resumes to the numbers of an
uninterrupted one (killed in process mid-epoch, and killed with SIGKILL), seeds are honoured, the outputs have
the documented content, and bad input gets one line and a non-zero exit."""
import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import binary_connect
import mnist
import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_idx(path, array, magic):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">ii", magic, len(array)) + b"".join(struct.pack(">i", d) for d in array.shape[1:]))
        f.write(array.astype(np.uint8).tobytes())


def make_mnist_folder(folder, n_train=600, n_test=100, seed=0):
    """Ten classes, each a fixed random 28x28 prototype plus noise, in the official IDX files."""
    rng = np.random.RandomState(seed)
    prototypes = rng.randint(0, 256, (10, 28, 28))

    def sample(n):
        labels = rng.randint(0, 10, n)
        images = np.clip(prototypes[labels] + rng.randint(-60, 61, (n, 28, 28)), 0, 255)
        return images, labels

    os.makedirs(folder, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = sample(n)
        write_idx(os.path.join(folder, prefix + "-images-idx3-ubyte.gz"), images, 2051)
        write_idx(os.path.join(folder, prefix + "-labels-idx1-ubyte.gz"), labels, 2049)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_mnist_folder(str(tmp_path_factory.mktemp("mnist")))


def run_script(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, "mnist.py")] + args, capture_output=True,
                          text=True, env=env, timeout=600, **kwargs)


def read_log(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def comparable(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.mark.parametrize("method", ["binarynet", "bc-det", "bc-stoch", "float"])
def test_each_method_learns_a_small_problem(method, data_dir, capsys):
    argv = ["--method", method, "--units", "64", "--epochs", "12", "--batch-size", "20", "--data-dir", data_dir]
    assert mnist.main(argv) == 0
    out = capsys.readouterr().out
    assert "Epoch 12 of 12 took" in out
    best = [float(line.split()[-1].rstrip("%")) for line in out.splitlines() if "best validation error rate:" in line]
    assert len(best) == 12
    assert best[-1] < 20, "chance is 90%; the generated classes are easy to separate: " + out


def test_output_files_and_printout(data_dir, tmp_path, capsys):
    out_dir = str(tmp_path / "run")
    argv = ["--method", "binarynet", "--units", "32", "--epochs", "2", "--train-size", "300", "--batch-size", "50",
            "--data-dir", data_dir, "--out", out_dir]
    assert mnist.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == ["batch_size = 50", "alpha = 0.1", "epsilon = 0.0001"]
    assert "activation = binary_net.binary_tanh_unit" in printed
    assert printed.index("Loading MNIST dataset...") < printed.index("Building the MLP...") < printed.index(
        "Training...")
    assert printed.count("W_LR_scale = " + str(binary_connect.glorot_lr_scale(784, 32))) == 1
    block = printed[printed.index("Training...") + 1:][:9]
    assert block[0].startswith("Epoch 1 of 2 took ")
    # values start at column 34 (index 33): two spaces and the label padded to 31 characters
    assert [line[:33] for line in block[1:3]] == ["  LR:" + " " * 28, "  training loss:" + " " * 17]
    assert block[1][33:] == "0.003"

    with open(os.path.join(out_dir, "results.json")) as f:
        results = json.load(f)
    for key in ("dataset", "method", "epochs", "epochs_done", "best_epoch", "best_val_error", "test_error",
                "paper_test_error", "train_size", "seconds", "hyperparameters"):
        assert key in results
    assert (results["dataset"], results["method"], results["epochs"], results["epochs_done"]) == (
        "mnist", "binarynet", 2, 2)
    assert results["train_size"] == 300 and results["paper_test_error"] == 0.96
    assert results["hyperparameters"]["num_units"] == 32
    log = read_log(out_dir)
    assert [row["epoch"] for row in log] == [1, 2]
    decay = (3e-7 / 0.003) ** 0.5
    assert log[1]["LR"] == pytest.approx(0.003 * decay)  # epoch e trains with LR_start * decay ** (e - 1)
    best = log[results["best_epoch"] - 1]
    assert results["test_error"] == best["test_error"] and results["best_val_error"] == best["val_error"]
    with np.load(os.path.join(out_dir, "mnist_parameters.npz")) as params:
        # the original layout (§2.5): per dense block W, b, beta, gamma, mean, inv_std
        assert [params["arr_%d" % i].shape for i in range(6)] == [(784, 32), (32,), (32,), (32,), (32,), (32,)]
        assert len(params.files) == 24

    # the run-time mode reads that file: the same test error with the BLAS and the XNOR product
    assert mnist.main(["--runtime", os.path.join(out_dir, "mnist_parameters.npz"), "--data-dir", data_dir,
                       "--kernels", "blas,xnor"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert float(rows["blas"][1]) == pytest.approx(results["test_error"], abs=0.01)  # same model, same test set
    assert float(rows["xnor"][1]) == float(rows["blas"][1])
    assert mnist.main(["--runtime", os.path.join(out_dir, "log.jsonl"), "--data-dir", data_dir]) == 1
    assert "error:" in capsys.readouterr().err


def test_interrupted_run_resumes_to_the_uninterrupted_numbers(data_dir, tmp_path, monkeypatch, capsys):
    """Killed in the middle of epoch 3 (in process), then resumed: same log, results and parameters."""
    common = ["--method", "bc-stoch", "--units", "32", "--epochs", "4", "--train-size", "300", "--batch-size", "50",
              "--data-dir", data_dir]
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    assert mnist.main(common + ["--out", whole]) == 0

    calls = {"n": 0}
    real_epoch_pass = binary_connect.epoch_pass

    def dying_epoch_pass(fn, X, y, batch_size, LR=None, progress=None):
        calls["n"] += 1
        if calls["n"] == 7:  # epoch 3's training pass (epochs 1-2: train, val, test each)
            fn(X[:batch_size], y[:batch_size], LR)  # half-done work that must not leak into the resumed run
            raise KeyboardInterrupt
        return real_epoch_pass(fn, X, y, batch_size, LR, progress)

    monkeypatch.setattr(binary_connect, "epoch_pass", dying_epoch_pass)
    with pytest.raises(KeyboardInterrupt):
        mnist.main(common + ["--out", broken])
    assert len(read_log(broken)) == 2
    monkeypatch.setattr(binary_connect, "epoch_pass", real_epoch_pass)
    with pytest.raises(results.RunError, match="hyperparameters differ"):
        mnist.main(common[:-2] + ["--epochs", "5", "--data-dir", data_dir, "--out", broken, "--resume"])
    assert mnist.main(common + ["--out", broken, "--resume"]) == 0
    assert "Resuming after epoch 2 of 4" in capsys.readouterr().out

    assert comparable(read_log(broken)) == comparable(read_log(whole))
    with np.load(os.path.join(whole, "mnist_parameters.npz")) as a, \
            np.load(os.path.join(broken, "mnist_parameters.npz")) as b:
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key


def test_sigkilled_run_resumes_and_seed_decides_the_numbers(data_dir, tmp_path):
    common = ["--method", "binarynet", "--units", "48", "--epochs", "30", "--train-size", "500", "--batch-size",
              "25", "--data-dir", data_dir]
    whole, killed, other_seed = str(tmp_path / "whole"), str(tmp_path / "killed"), str(tmp_path / "seed")
    assert run_script(common + ["--out", whole]).returncode == 0

    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "mnist.py")] + common + ["--out", killed],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    log = os.path.join(killed, "log.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(log) and len(open(log).read().splitlines()) >= 2):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_when_killed = len(read_log(killed))
    assert 2 <= done_when_killed < 30, "the run must be killed part-way"

    resumed = run_script(common + ["--out", killed, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert comparable(read_log(killed)) == comparable(read_log(whole))

    assert run_script(common + ["--out", other_seed, "--seed", "99"]).returncode == 0
    assert comparable(read_log(other_seed)) != comparable(read_log(whole))


@pytest.mark.parametrize("args,message", [
    (["--method", "xnor"], "invalid choice"),
    (["--epochs", "0"], "must be positive"),
    (["--train-size", "-5"], "must be positive"),
    (["--batch-size", "ten"], "expected a whole number"),
    (["--resume"], "--resume needs --out"),
])
def test_bad_command_line_values_give_one_line(args, message):
    result = run_script(args)
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_bad_data_folders_give_one_line(tmp_path, data_dir):
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    result = run_script(["--data-dir", empty, "--epochs", "1"])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "train-images-idx3-ubyte" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    broken = make_mnist_folder(str(tmp_path / "broken"), n_train=60, n_test=10)
    path = os.path.join(broken, "train-images-idx3-ubyte.gz")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # a truncated archive
    result = run_script(["--data-dir", broken, "--epochs", "1"])
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train-images-idx3-ubyte.gz" in errors[0]


def test_an_existing_run_is_not_overwritten(data_dir, tmp_path):
    out_dir = str(tmp_path / "run")
    os.makedirs(out_dir)
    open(os.path.join(out_dir, "checkpoint.npz"), "wb").close()
    result = run_script(["--data-dir", data_dir, "--out", out_dir])
    assert result.returncode != 0 and "--resume" in result.stderr and "Traceback" not in result.stderr
