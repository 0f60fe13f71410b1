"""benchmark.py and benchmark_training.py: their argument checks (one line, exit status 2) and the networks the
training benchmark builds (the scripts' own, at a reduced width), and the order the kernels are timed in. The timings
themselves are not tested."""
import argparse

import pytest

import benchmark
import benchmark_training
import mnist
from plumbing import cli
from plumbing.compat import T, lasagne


def test_sizes_and_thread_counts():
    assert benchmark.parse_sizes("64, 8x16x4") == [(64, 64, 64), (8, 16, 4)]
    assert benchmark.parse_threads("1,all,2,all", all_cores=2) == [1, 2]
    for bad in ("0", "8x8", "axbxc", "8x8x-1"):
        with pytest.raises(benchmark.BenchmarkError, match="bad size"):
            benchmark.parse_sizes(bad)
    with pytest.raises(benchmark.BenchmarkError, match="bad thread count '0'"):
        benchmark.parse_threads("0", all_cores=2)


def test_kernels_take_turns():
    """Warm-up calls first, then one call of every kernel per round; each kernel gets its own median, minimum and
    last result (here the call counters, so the order is checked exactly)."""
    calls = []

    def kernel(name):
        def call():
            calls.append(name)
            return len(calls)
        return call

    timed = benchmark.time_in_turns([kernel("a"), kernel("b"), kernel("c")], repeats=3, warmup=1)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] * 3
    assert [result for _, _, result in timed] == [10, 11, 12]
    assert all(0 <= minimum <= median for median, minimum, _ in timed)


def test_peak_rate_is_the_highest_of_its_trials(monkeypatch):
    """A busy moment can only lower a measured instruction rate, so the limit is the highest measurement."""
    from kernels import cpu
    rates = iter([3.0, 7.0, 5.0])
    seen = []

    def measure(which, threads, seconds):
        seen.append((which, threads, seconds))
        return next(rates)

    monkeypatch.setattr(cpu, "measure_rate", measure)
    assert benchmark.peak_rate("add256", 2, trials=3, seconds=0.01) == 7.0
    assert seen == [("add256", 2, 0.01)] * 3


def test_each_thread_count_gets_its_highest_measured_limit():
    rows = [{"threads": 1, "limits": {"issue": 5.0}}, {"threads": 1, "limits": {"issue": 9.0}},
            {"threads": 2, "limits": {"issue": 12.0}}, {"threads": 1, "kernel": "BLAS"}]
    assert benchmark.highest_limits(rows) == [
        {"threads": 1, "limits": {"issue": 9.0}}, {"threads": 1, "limits": {"issue": 9.0}},
        {"threads": 2, "limits": {"issue": 12.0}}, {"threads": 1, "kernel": "BLAS"}]


@pytest.mark.parametrize("argv, fragment", [
    (["--device", "cpu", "--sizes", "8x8"], "error: bad size '8x8' in --sizes"),
    (["--device", "cpu", "--repeats", "0"], "error: --repeats must be >= 1"),
    (["--device", "cpu", "--settle", "-1"], "error: --settle must be between 0 and 60 seconds"),
    (["--device", "cpu", "--plot", "chart.pdf"], "error: --plot takes a .png file name"),
])
def test_benchmark_errors_are_one_line_with_status_2(argv, fragment, capsys):
    assert cli.main_guard(benchmark.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(fragment) and err.count("\n") == 1


def test_training_benchmark_network_list():
    assert benchmark_training.network_list("bnn-mnist, bc-svhn") == ["bnn-mnist", "bc-svhn"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown network"):
        benchmark_training.network_list("bnn-imagenet")


@pytest.mark.parametrize("name", list(benchmark_training.NETWORKS))
def test_training_benchmark_builds_the_scripts_networks(name):
    network, hp, shape = benchmark_training.build(name, 1 / 64, T.tensor4())
    script, method = benchmark_training.NETWORKS[name]
    assert hp["batch_size"] == {"mnist": 100, "cifar10": 50, "svhn": 50}[script]
    layers = lasagne.layers.get_all_layers(network)
    assert layers[0].shape[1:] == shape and layers[-1].output_shape == (None, 10)
    if script == "mnist":  # the MLP of mnist.py at 1/64 of its hidden units
        assert layers[2].num_units == mnist.hyperparameters(method)["num_units"] // 64
