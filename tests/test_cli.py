"""plumbing/cli.py and plumbing/errors.py: value checks, the one-line parser, the shared flags, the guard's exit
statuses, and the checks every experiment runs before loading data."""
import argparse

import pytest

import benchmark
import binary_inference
from kernels import cpu, gpu, theano_ops
from plumbing import cli, preprocessing
from plumbing.errors import ArchiveError, DataError, RunError, UsageError


def test_methods_and_their_families():
    assert list(cli.METHODS) == ["binarynet", "bc-det", "bc-stoch", "float", "binarynet-torch7"]
    assert [cli.family(m) for m in cli.METHODS] == ["binarynet", "binaryconnect", "binaryconnect", "binaryconnect",
                                                    "binarynet-torch7"]


@pytest.mark.parametrize("check, text, expected", [
    (cli.positive_int, "7", 7), (cli.positive_int, "0", "must be positive, got 0"),
    (cli.positive_int, "-3", "must be positive, got -3"), (cli.positive_int, "2.5", "expected a whole number"),
    (cli.seed_int, "0", 0), (cli.seed_int, "4294967295", 4294967295),
    (cli.seed_int, "4294967296", "must be between 0 and 4294967295"), (cli.seed_int, "-1", "must be between"),
    (cli.seed_int, "x", "expected a whole number"),
    (cli.positive_float, "0.0625", 0.0625), (cli.positive_float, "1e6", 1e6),
    (cli.positive_float, "0", "must be a number above 0"), (cli.positive_float, "nan", "must be a number above 0"),
    (cli.positive_float, "inf", "at most 1e\\+06"), (cli.positive_float, "1e7", "at most 1e\\+06"),
    (cli.positive_float, "wide", "expected a number"),
])
def test_value_checks(check, text, expected):
    if isinstance(expected, str):
        with pytest.raises(argparse.ArgumentTypeError, match=expected):
            check(text)
    else:
        assert check(text) == expected and type(check(text)) is type(expected)


def test_parser_error_is_one_line_with_exit_status_2(capsys):
    p = cli.Parser("demo", prog="demo.py")
    p.add_argument("--n", type=cli.positive_int)
    with pytest.raises(SystemExit) as info:
        p.parse_args(["--n", "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err == "demo.py: error: argument --n: must be positive, got 0 (see --help)\n"


def test_experiment_flags_and_defaults():
    args = cli.experiment_parser("demo").parse_args([])
    assert (args.method, args.seed, args.epochs, args.batch_size, args.train_size, args.out, args.resume) == (
        "binarynet", 1234, None, None, None, None, False)
    assert not hasattr(args, "units") and not hasattr(args, "width")
    args = cli.experiment_parser("demo", units_flag=True, width_flag=True).parse_args(["--units", "5"])
    assert (args.units, args.width) == (5, 1.0)


def test_overrides_keep_the_originals_values_unless_given():
    hp = {"batch_size": 100, "num_epochs": 250, "num_units": 2048}
    assert cli.overrides(dict(hp)) == hp
    assert cli.overrides(dict(hp), 20, 3, num_units=None, extra=None) == hp | {"batch_size": 20, "num_epochs": 3}
    assert cli.overrides(dict(hp), num_units=64)["num_units"] == 64


def test_hyperparameters_print_one_line_each_in_order(capsys):
    cli.print_hyperparameters({"batch_size": 50, "H": 1., "W_LR_scale": "Glorot"})
    assert capsys.readouterr().out == "batch_size = 50\nH = 1.0\nW_LR_scale = Glorot\n"


def test_guard_returns_the_status_of_main(capsys):
    assert cli.main_guard(lambda *args: len(args), "a", "b") == 2
    assert cli.main_guard(lambda: 0) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("error, status, line", [
    (UsageError("bad --width; use a number above 0"), 2, "error: bad --width; use a number above 0\n"),
    (DataError("no such file"), 2, "error: no such file\n"),
    (binary_inference.InferenceError("unknown kernel"), 2, "error: unknown kernel\n"),
    (KeyboardInterrupt(), 130, "interrupted: the last finished epoch is kept; rerun with --resume to continue\n"),
    (MemoryError(), 3, "error: out of memory; use a smaller --train-size / --batch-size or shuffle in parts\n"),
])
def test_guard_turns_user_errors_into_one_line_and_a_status(error, status, line, capsys):
    def main():
        raise error
    assert cli.main_guard(main) == status
    assert capsys.readouterr().err == line


def test_guard_lets_bugs_keep_their_traceback():
    def main():
        raise ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        cli.main_guard(main)


@pytest.mark.parametrize("error_class", [UsageError, DataError, RunError, preprocessing.PreprocessingError,
                                         binary_inference.InferenceError, benchmark.BenchmarkError, cpu.KernelError,
                                         theano_ops.NoGradientError, gpu.GpuUnavailable, gpu.KernelCompileError,
                                         gpu.KernelInputError])
def test_every_user_error_is_an_archive_error(error_class):
    assert issubclass(error_class, ArchiveError)


def test_every_set_must_hold_one_minibatch():
    cli.check_batches(50, training=50, validation=5000, test=10000)
    with pytest.raises(UsageError) as info:
        cli.check_batches(50, training=100, validation=49, test=10000)
    assert str(info.value) == ("the validation set has 49 rows, fewer than one minibatch of 50; pass a smaller "
                               "--batch-size")
