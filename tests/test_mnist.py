"""mnist.py: the original scripts' settings and MLPs (fast), and (slow) whole runs on small generated data: every
method learns, a run resumes to the numbers of an uninterrupted one (killed in process mid-epoch, and killed with
SIGKILL), seeds are honoured, the outputs have the documented content. Bad input gets one line and exit status 2."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import batch_norm
import binary_connect
import binary_net
import mnist
from plumbing import cli
from plumbing.compat import T, lasagne
from plumbing.errors import RunError

from conftest import REPO, error_lines, run_command


# --------------------------------------------------------------------------- the original scripts' settings
@pytest.mark.parametrize("method, names, values", [
    ("binarynet", "batch_size alpha epsilon num_units n_hidden_layers num_epochs dropout_in dropout_hidden activation "
     "binary stochastic H W_LR_scale LR_start LR_fin LR_decay save_path shuffle_parts",
     [100, .1, 1e-4, 4096, 3, 1000, .2, .5, "binary_net.binary_tanh_unit", True, False, 1., "Glorot", .003, 3e-7,
      0.990831945, "mnist_parameters.npz", 1]),
    ("bc-stoch", "batch_size alpha epsilon num_units n_hidden_layers num_epochs dropout_in dropout_hidden binary "
     "stochastic H W_LR_scale LR_start LR_fin LR_decay",
     [100, .15, 1e-4, 2048, 3, 250, 0., 0., True, True, 1., "Glorot", .001, 3e-6, 0.977031318]),
    ("bc-det", "batch_size alpha epsilon num_units n_hidden_layers num_epochs dropout_in dropout_hidden binary "
     "stochastic H W_LR_scale LR_start LR_fin LR_decay",
     [100, .15, 1e-4, 2048, 3, 250, 0., 0., True, False, 1., "Glorot", .001, 3e-6, 0.977031318]),
    ("float", "batch_size alpha epsilon num_units n_hidden_layers num_epochs dropout_in dropout_hidden binary "
     "stochastic H W_LR_scale LR_start LR_fin LR_decay",
     [100, .15, 1e-4, 2048, 3, 250, 0., 0., False, False, 1., "Glorot", .001, 3e-6, 0.977031318]),
])
def test_default_hyperparameters_and_print_order_are_the_originals(method, names, values):
    """ORIGINALS.md §2.1: values and print order; LR_decay = (LR_fin / LR_start) ** (1 / num_epochs) (§1.9)."""
    hp = mnist.hyperparameters(method)
    assert list(hp) == names.split()
    for name, expected in zip(names.split(), values):
        if isinstance(expected, float):
            assert hp[name] == pytest.approx(expected, rel=1e-8), name
        else:
            assert hp[name] == expected and type(hp[name]) is type(expected), name


def test_command_line_values_override_the_tables():
    hp = mnist.hyperparameters("binarynet", batch_size=20, epochs=10, units=64)
    assert (hp["batch_size"], hp["num_epochs"], hp["num_units"]) == (20, 10, 64)
    assert hp["LR_decay"] == pytest.approx((3e-7 / .003) ** 0.1, rel=1e-12)
    assert 0.003 * hp["LR_decay"] ** 10 == pytest.approx(3e-7)   # LR_fin would be the LR after the last epoch
    assert mnist.hyperparameters("float", units=None)["num_units"] == 2048


# --------------------------------------------------------------------------- the two MLPs (§2.2, §2.4)
def layer_summary(net):
    """(kind, output shape, dropout rate or activation function, number of parameter values) per layer."""
    kinds = {lasagne.layers.InputLayer: "in", lasagne.layers.DropoutLayer: "drop", binary_connect.DenseLayer: "dense",
             batch_norm.BatchNormLayer: "bn", batch_norm.BCBatchNormLayer: "bn",
             lasagne.layers.NonlinearityLayer: "act"}
    rows = []
    for layer in lasagne.layers.get_all_layers(net):
        detail = getattr(layer, "p", None)
        if hasattr(layer, "nonlinearity") and not isinstance(layer, binary_connect.DenseLayer):
            detail = layer.nonlinearity
        size = sum(p.get_value(borrow=True).size for p in layer.get_params())
        rows.append((kinds[type(layer)], layer.output_shape[1:], detail, size))
    return rows


def test_binarynet_mlp_layer_by_layer():
    """Input -> Drop(0.2) -> 3 x [BDense -> BN -> binary_tanh -> Drop(0.5)] -> BDense(10) -> BN, 8 units."""
    hp = mnist.hyperparameters("binarynet", units=8)
    net = mnist.build_mlp("binarynet", T.tensor4(), hp)
    hidden = [("bn", (8,), None, 4 * 8), ("act", (8,), binary_net.binary_tanh_unit, 0), ("drop", (8,), 0.5, 0)]
    assert layer_summary(net) == (
        [("in", (1, 28, 28), None, 0), ("drop", (1, 28, 28), 0.2, 0), ("dense", (8,), None, 784 * 8 + 8)] + hidden
        + [("dense", (8,), None, 8 * 8 + 8)] + hidden + [("dense", (8,), None, 8 * 8 + 8)] + hidden
        + [("dense", (10,), None, 8 * 10 + 10), ("bn", (10,), None, 4 * 10)])

    def count(**tags):
        return sum(p.get_value().size for p in lasagne.layers.get_all_params(net, **tags))
    assert count() == 6650
    assert count(binary=True) == 784 * 8 + 8 * 8 * 2 + 8 * 10          # W of the four dense layers
    assert count(trainable=True) == 3 * 8 * 3 + 3 * 10                  # b, beta, gamma
    assert all(isinstance(layer, lasagne.layers.DropoutLayer) for layer in lasagne.layers.get_all_layers(net)[1::4])


def test_binaryconnect_mlp_layer_by_layer():
    """Input -> Drop(0) -> 3 x [BDense -> BN with ReLU -> Drop(0)] -> BDense(10) -> BN (identity), 8 units."""
    hp = mnist.hyperparameters("bc-stoch", units=8)
    net = mnist.build_mlp("binaryconnect", T.tensor4(), hp)
    hidden = [("bn", (8,), lasagne.nonlinearities.rectify, 4 * 8), ("drop", (8,), 0.0, 0)]
    assert layer_summary(net) == (
        [("in", (1, 28, 28), None, 0), ("drop", (1, 28, 28), 0.0, 0), ("dense", (8,), None, 784 * 8 + 8)] + hidden
        + [("dense", (8,), None, 8 * 8 + 8)] + hidden + [("dense", (8,), None, 8 * 8 + 8)] + hidden
        + [("dense", (10,), None, 8 * 10 + 10), ("bn", (10,), lasagne.nonlinearities.identity, 4 * 10)])
    dense = [layer for layer in lasagne.layers.get_all_layers(net) if isinstance(layer, binary_connect.DenseLayer)]
    assert all(layer.stochastic and layer.binary for layer in dense)
    assert [layer.alpha for layer in lasagne.layers.get_all_layers(net) if hasattr(layer, "alpha")] == [.15] * 4


def test_float_mlp_trains_its_weights_with_adam():
    net = mnist.build_mlp("binaryconnect", T.tensor4(), mnist.hyperparameters("float", units=8))
    assert lasagne.layers.get_all_params(net, binary=True) == []
    assert sum(p.get_value().size for p in lasagne.layers.get_all_params(net, trainable=True)) == 6480 + 3 * 34


# --------------------------------------------------------------------------- bad input (in process)
@pytest.mark.parametrize("args, message", [
    (["--method", "xnor"], "invalid choice"),
    (["--epochs", "0"], "must be positive"),
    (["--train-size", "-5"], "must be positive"),
    (["--batch-size", "ten"], "expected a whole number"),
    (["--seed", "-1"], "must be between 0 and 4294967295"),
])
def test_bad_flags_give_one_line_and_exit_status_2(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main_guard(mnist.main, args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(error_lines(err)) == 1 and message in err, err


def test_an_existing_run_is_not_overwritten(tmp_path, capsys):
    open(tmp_path / "checkpoint.npz", "wb").close()
    assert cli.main_guard(mnist.main, ["--data-dir", str(tmp_path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run; add --resume" in err and len(error_lines(err)) == 1
    assert cli.main_guard(mnist.main, ["--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_bad_data_folders_give_one_line(tmp_path, write_mnist, capsys):
    assert cli.main_guard(mnist.main, ["--data-dir", str(tmp_path), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "train-images-idx3-ubyte" in err and str(tmp_path) in err

    broken = str(tmp_path / "broken")
    write_mnist(broken, n_train=60, n_test=10)
    path = os.path.join(broken, "train-images-idx3-ubyte.gz")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # a truncated archive
    assert cli.main_guard(mnist.main, ["--data-dir", broken, "--epochs", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train-images-idx3-ubyte.gz" in errors[0]   # besides a note on unofficial files


# --------------------------------------------------------------------------- whole runs (slow)
def run_script(args):
    return run_command(["mnist.py"] + args)


def read_log(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def comparable(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize("method", list(cli.METHODS))
def test_each_method_learns_a_small_problem(method, mnist_dir, capsys):
    argv = ["--method", method, "--units", "64", "--epochs", "12", "--batch-size", "20", "--data-dir", mnist_dir]
    assert mnist.main(argv) == 0
    out = capsys.readouterr().out
    assert "Epoch 12 of 12 took" in out
    best = [float(line.split()[-1].rstrip("%")) for line in out.splitlines() if "best validation error rate:" in line]
    assert len(best) == 12
    assert best[-1] < 20, "chance is 90%; the generated classes are easy to separate: " + out


@pytest.mark.slow
def test_output_files_and_printout(mnist_dir, tmp_path, capsys):
    out_dir = str(tmp_path / "run")
    argv = ["--method", "binarynet", "--units", "32", "--epochs", "2", "--train-size", "300", "--batch-size", "50",
            "--data-dir", mnist_dir, "--out", out_dir]
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
        assert [params[f"arr_{i}"].shape for i in range(6)] == [(784, 32), (32,), (32,), (32,), (32,), (32,)]
        assert len(params.files) == 24

    # the run-time mode reads that file: the same test error with the BLAS and the XNOR product
    assert mnist.main(["--runtime", os.path.join(out_dir, "mnist_parameters.npz"), "--data-dir", mnist_dir,
                       "--kernels", "blas,xnor"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert float(rows["blas"][1]) == pytest.approx(results["test_error"], abs=0.01)  # same model, same test set
    assert float(rows["xnor"][1]) == float(rows["blas"][1])
    assert cli.main_guard(mnist.main, ["--runtime", os.path.join(out_dir, "log.jsonl"), "--data-dir", mnist_dir]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(error_lines(err)) == 1


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_uninterrupted_numbers(mnist_dir, tmp_path, monkeypatch, capsys):
    """Killed in the middle of epoch 3 (in process), then resumed: same log, results and parameters."""
    common = ["--method", "bc-stoch", "--units", "32", "--epochs", "4", "--train-size", "300", "--batch-size", "50",
              "--data-dir", mnist_dir]
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
    with pytest.raises(RunError, match="hyperparameters differ"):
        mnist.main(common[:-2] + ["--epochs", "5", "--data-dir", mnist_dir, "--out", broken, "--resume"])
    assert mnist.main(common + ["--out", broken, "--resume"]) == 0
    assert "Resuming after epoch 2 of 4" in capsys.readouterr().out

    assert comparable(read_log(broken)) == comparable(read_log(whole))
    with np.load(os.path.join(whole, "mnist_parameters.npz")) as a, \
            np.load(os.path.join(broken, "mnist_parameters.npz")) as b:
        for key in a.files:
            assert np.array_equal(a[key], b[key]), key


@pytest.mark.slow
def test_sigkilled_run_resumes_and_seed_decides_the_numbers(mnist_dir, tmp_path):
    common = ["--method", "binarynet", "--units", "48", "--epochs", "30", "--train-size", "500", "--batch-size",
              "25", "--data-dir", mnist_dir]
    whole, killed, other_seed = str(tmp_path / "whole"), str(tmp_path / "killed"), str(tmp_path / "seed")
    assert run_script(common + ["--out", whole]).returncode == 0

    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "mnist.py")] + common + ["--out", killed],
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


@pytest.mark.slow
def test_the_script_prints_one_line_and_no_traceback(tmp_path):
    result = run_script(["--epochs", "0"])
    assert result.returncode == 2 and len(error_lines(result.stderr)) == 1 and "must be positive" in result.stderr
    result = run_script(["--data-dir", str(tmp_path), "--epochs", "1"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(error_lines(result.stderr)) == 1 and "train-images-idx3-ubyte" in result.stderr
