"""cifar10.py and svhn.py: the original scripts' settings, their command lines, and (slow) whole runs on tiny files
in the official formats."""
import json
import os

import numpy as np
import pytest

import binary_connect
import cifar10
import svhn
from plumbing import cli

from conftest import error_lines


# --------------------------------------------------------------------------- the scripts' settings
@pytest.mark.parametrize("module, method, names, values", [
    (cifar10, "binarynet",
     "batch_size alpha epsilon activation binary stochastic H W_LR_scale num_epochs LR_start LR_fin LR_decay "
     "train_set_size shuffle_parts", [50, .1, 1e-4, "binary_net.binary_tanh_unit", True, False, 1., "Glorot", 500,
                                      .001, 3e-7, 0.983907435, 45000, 1]),
    (cifar10, "bc-stoch",
     "batch_size alpha epsilon num_epochs binary stochastic H W_LR_scale LR_start LR_fin LR_decay train_set_size",
     [50, .1, 1e-4, 500, True, True, 1., "Glorot", .003, 2e-6, 0.985480006, 45000]),
    (svhn, "binarynet",
     "batch_size alpha epsilon activation binary stochastic H W_LR_scale num_epochs LR_start LR_fin LR_decay "
     "shuffle_parts", [50, .1, 1e-4, "binary_net.binary_tanh_unit", True, False, 1., "Glorot", 200, .001, 1e-6,
                       0.966050879, 1]),
    (svhn, "bc-det",
     "batch_size alpha epsilon num_epochs binary stochastic H W_LR_scale LR_start LR_fin LR_decay",
     [50, .1, 1e-4, 200, True, False, 1., "Glorot", .01, 3e-6, 0.960252853]),
    (svhn, "float",
     "batch_size alpha epsilon num_epochs binary stochastic H W_LR_scale LR_start LR_fin LR_decay",
     [50, .1, 1e-4, 200, False, False, 1., "Glorot", .01, 3e-6, 0.960252853])])
def test_default_hyperparameters_and_print_order_are_the_originals(module, method, names, values):
    """ORIGINALS.md §2.1: values and the order in which the original scripts print them; LR_decay is
    (LR_fin / LR_start) ** (1 / num_epochs) (§1.9)."""
    hp = module.hyperparameters(method)
    assert list(hp) == names.split()
    for name, expected in zip(names.split(), values):
        if isinstance(expected, float):
            assert hp[name] == pytest.approx(expected, rel=1e-8), name
        else:
            assert hp[name] == expected and type(hp[name]) is type(expected), name


def test_command_line_values_override_the_tables():
    hp = cifar10.hyperparameters("bc-det", batch_size=10, epochs=4, train_size=100)
    assert (hp["batch_size"], hp["num_epochs"], hp["train_set_size"], hp["stochastic"]) == (10, 4, 100, False)
    assert hp["LR_decay"] == pytest.approx((2e-6 / .003) ** 0.25, rel=1e-12)   # recomputed for 4 epochs
    assert cifar10.hyperparameters("float", train_size=10 ** 6)["train_set_size"] == 45000
    assert svhn.hyperparameters("binarynet", shuffle_parts=7)["shuffle_parts"] == 7
    # BinaryConnect's table has no shuffle_parts (the original copies); svhn.main passes --shuffle-parts on itself
    assert "shuffle_parts" not in svhn.hyperparameters("bc-stoch", shuffle_parts=7)
    assert cifar10.hyperparameters("float")["binary"] is False


# --------------------------------------------------------------------------- bad input (in process)
@pytest.mark.parametrize("module, argv, fragment", [
    (cifar10, ["--width", "0"], "--width: must be a number above 0"),
    (svhn, ["--method", "foo"], "invalid choice: 'foo'"),
    (svhn, ["--shuffle-parts", "0"], "--shuffle-parts: must be positive"),
])
def test_bad_flags_give_one_line_and_exit_status_2(module, argv, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main_guard(module.main, argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert len(error_lines(err)) == 1 and fragment in err, err


def test_resume_without_out_is_a_usage_error(capsys):
    assert cli.main_guard(cifar10.main, ["--resume"]) == 2
    assert capsys.readouterr().err == "error: --resume needs --out pointing at the interrupted run's folder\n"


@pytest.mark.parametrize("module, argv, fragment", [
    (cifar10, [], "CIFAR-10 not found in"),
    (svhn, ["--no-extra"], "train_32x32.mat"),
])
def test_missing_data_gives_one_line_and_exit_status_2(module, argv, fragment, tmp_path, capsys):
    status = cli.main_guard(module.main, argv + ["--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and len(error_lines(err)) == 1
    assert err.startswith("error: ") and fragment in err and str(tmp_path) in err


def test_batch_larger_than_a_set_is_a_one_line_error(tmp_path, write_cifar10, capsys):
    write_cifar10(str(tmp_path / "raw"), rows=4)   # 20 training rows: 18 train, 2 validate
    status = cli.main_guard(cifar10.main, ["--method", "binarynet", "--epochs", "1", "--batch-size", "5",
                                           "--data-dir", str(tmp_path / "raw")])
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: the validation set has 2 rows, fewer than one minibatch of 5; pass a smaller --batch-size")


# --------------------------------------------------------------------------- the scripts on tiny official files
RESULT_KEYS = {"dataset", "method", "epochs", "epochs_done", "train_size", "paper_test_error", "hyperparameters",
               "best_epoch", "best_val_error", "val_error", "test_error", "test_loss", "finished", "environment"}


def check_run(out, dataset, method, train_size, printed):
    with open(os.path.join(out, "results.json")) as f:
        summary = json.load(f)
    assert RESULT_KEYS <= set(summary)
    assert summary["dataset"] == dataset and summary["method"] == method and summary["finished"]
    assert summary["train_size"] == train_size and summary["best_epoch"] == 1
    assert 0 <= summary["test_error"] <= 100
    assert summary["hyperparameters"]["width"] == 0.0625
    with open(os.path.join(out, "log.jsonl")) as f:
        assert len(f.read().splitlines()) == 1
    with np.load(os.path.join(out, dataset + "_parameters.npz")) as params:
        assert len(params.files) == 9 * 2 + 9 * 4                 # W and b of 9 layers, 4 vectors per BN
    lines = printed.splitlines()
    assert lines.index("Building the CNN...") < lines.index("Training...")
    first_conv = binary_connect.glorot_lr_scale(27, 9 * (8 if dataset == "cifar10" else 4))  # width 1/16
    assert lines.count("W_LR_scale = " + str(first_conv)) == 1
    assert len([line for line in lines if line.startswith("W_LR_scale = ")]) == 1 + 9   # hyperparameter + layers
    return summary


@pytest.mark.slow
def test_cifar10_script_on_a_tiny_tarball(tmp_path, data_cache, write_cifar10, capsys):
    write_cifar10(str(tmp_path / "raw"), rows=20)
    out = str(tmp_path / "run")
    status = cli.main_guard(cifar10.main, ["--method", "bc-stoch", "--epochs", "1", "--width", "0.0625",
                                           "--train-size", "40", "--batch-size", "10", "--data-dir",
                                           str(tmp_path / "raw"), "--out", out])
    printed = capsys.readouterr().out
    assert status == 0
    assert printed.splitlines()[11:13] == ["train_set_size = 40", "Loading CIFAR-10 dataset..."]
    check_run(out, "cifar10", "bc-stoch", 40, printed)
    assert os.listdir(os.path.join(data_cache, "preprocessed"))   # the ZCA cache went to the data folder


@pytest.mark.slow
def test_svhn_script_on_tiny_mat_files(tmp_path, data_cache, write_svhn, capsys):
    # 4040 rows: 4000 validate (400 per class), 40 train
    write_svhn(str(tmp_path / "raw"), {"train": 404, "test": 2})
    out = str(tmp_path / "run")
    status = cli.main_guard(svhn.main, ["--method", "binarynet", "--epochs", "1", "--width", "0.0625",
                                        "--no-extra", "--shuffle-parts", "2", "--batch-size", "20",
                                        "--data-dir", str(tmp_path / "raw"), "--out", out])
    printed = capsys.readouterr().out
    assert status == 0
    assert printed.splitlines()[12:14] == ["shuffle_parts = 2", "Loading SVHN dataset"]
    summary = check_run(out, "svhn", "binarynet", 40, printed)
    assert summary["hyperparameters"]["use_extra"] is False


@pytest.mark.slow
@pytest.mark.parametrize("argv, fragment", [
    (["cifar10.py", "--width", "0"], "--width: must be a number above 0"),
    (["svhn.py", "--method", "foo"], "invalid choice: 'foo'"),
    (["cifar10.py", "--data-dir", "EMPTY"], "CIFAR-10 not found in"),
    (["svhn.py", "--data-dir", "EMPTY", "--no-extra"], "EMPTY"),
])
def test_scripts_print_one_line_and_no_traceback(tmp_path, run_command, argv, fragment):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [str(empty) if a == "EMPTY" else a for a in argv]
    result = run_command(argv, timeout=120)
    assert result.returncode == 2
    err = error_lines(result.stderr)
    assert len(err) == 1 and fragment.replace("EMPTY", str(empty)) in err[0], result.stderr
