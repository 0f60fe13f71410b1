"""benchmark_training.py --peer without TensorFlow: the layer table the peer builds its Larq network from (read off
the Lasagne network), its parameter shapes, the missing-environment message and the table's ratio lines. The
timings themselves are not tested (docs/speed.md)."""
import os
import subprocess
import sys

import pytest

import benchmark_peer
import benchmark_training
from plumbing import cli
from plumbing.compat import T, lasagne

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lasagne_weight_shapes(network):
    """(W, b) shapes of the Lasagne network's weight layers, input to output."""
    return [(layer.W.get_value().shape, layer.b.get_value().shape)
            for layer in lasagne.layers.get_all_layers(network) if hasattr(layer, "W")]


@pytest.mark.parametrize("name", list(benchmark_training.NETWORKS))
def test_peer_table_has_the_parameter_shapes_of_our_network(name):
    network, hp, shape = benchmark_training.build(name, 1 / 32, T.tensor4())
    table = benchmark_training.layer_table(network, hp, shape)
    assert benchmark_peer.weight_shapes(table) == lasagne_weight_shapes(network)
    assert table["batch_size"] == hp["batch_size"] and table["learning_rate"] == hp["LR_start"]


def test_peer_table_of_the_binarynet_mlp():
    network, hp, shape = benchmark_training.build("bnn-mnist", 1 / 64, T.tensor4())
    hidden = [["dense", 64], ["bn", 1e-4, 0.1], ["sign"], ["dropout", 0.5]]
    assert benchmark_training.layer_table(network, hp, shape) == dict(
        batch_size=100, input_shape=[1, 28, 28], learning_rate=0.003, weight_draw="sign",
        layers=[["dropout", 0.2]] + hidden * 3 + [["dense", 10], ["bn", 1e-4, 0.1]])


def test_peer_table_of_the_binaryconnect_convnet():
    network, hp, shape = benchmark_training.build("bc-svhn", 1 / 64, T.tensor4())
    layers = benchmark_training.layer_table(network, hp, shape)["layers"]
    bn_relu = [["bn", 1e-4, 0.1], ["relu"]]
    assert layers[:8] == [["conv", 1]] + bn_relu + [["conv", 1], ["pool", 2]] + bn_relu + [["conv", 2]]
    assert layers[-4:] == [["bn", 1e-4, 0.1], ["relu"], ["dense", 10], ["bn", 1e-4, 0.1]]


@pytest.mark.parametrize("name", list(benchmark_training.NETWORKS))
def test_peer_draws_binaryconnect_weights_stochastically_as_our_network_does(name):
    network, hp, shape = benchmark_training.build(name, 1 / 64, T.tensor4())
    table = benchmark_training.layer_table(network, hp, shape)
    assert table["weight_draw"] == ("stochastic" if name.startswith("bc-") else "sign")


def test_weight_shapes_of_a_hand_written_table():
    table = dict(input_shape=[3, 8, 8], layers=[["conv", 4], ["bn", 1e-4, 0.1], ["pool", 2], ["sign"], ["dense", 5],
                                                ["dropout", 0.5], ["dense", 10]])
    assert benchmark_peer.weight_shapes(table) == [((4, 3, 3, 3), (4,)), ((64, 5), (5,)), ((5, 10), (10,))]


def test_the_peer_script_does_not_import_theano():
    code = "import sys, benchmark_peer; print('theano' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_missing_peer_environment_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(benchmark_training, "PEER_PYTHON", str(tmp_path / ".venv-peer" / "bin" / "python"))
    assert cli.main_guard(benchmark_training.main, ["--peer", "--networks", "bnn-mnist"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "run `make peer` first" in captured.err
    assert captured.out == ""


def side(seconds, compile_seconds=1.0, peak_mib=100.0):
    return dict(batch_size=50, seconds=seconds, compile_seconds=compile_seconds, peak_mib=peak_mib)


def test_ratio_row_divides_theano_by_peer():
    row = benchmark_training.ratio_row("bnn-svhn", side(0.6, 12.3, 900), side(0.25, 4.5, 1200))
    assert row.split() == ["bnn-svhn", "50", "0.600", "0.250", "2.40", "12.3", "4.5", "900", "1200"]
    failed = benchmark_training.ratio_row("bc-svhn", side(0.5), dict(error="No module named 'larq'"))
    assert failed == "bc-svhn      peer failed: No module named 'larq'"


def test_worst_line_names_the_largest_ratio_of_the_networks_both_sides_ran():
    pairs = [("bnn-mnist", side(0.4), side(0.5)), ("bnn-cifar10", side(1.5), side(1.0)),
             ("bc-cifar10", side(9.0), dict(error="killed")), ("bc-svhn", side(0.3), side(0.25))]
    assert benchmark_training.worst_line(pairs) == "worst ratio Theano/peer: 1.50 (bnn-cifar10)"
    assert benchmark_training.worst_line(pairs[2:3]) == "worst ratio Theano/peer: none (no network ran on both sides)"


def test_merge_takes_the_median_of_every_timed_call_of_all_rounds():
    runs = [dict(side(0.0, 3.0, 50), times=[1.0, 5.0]), dict(side(0.0, 2.0, 70), times=[2.0])]
    row = benchmark_training.merge(runs)
    assert (row["seconds"], row["min_seconds"], row["compile_seconds"], row["peak_mib"]) == (2.0, 1.0, 3.0, 70)
    assert benchmark_training.merge(runs + [dict(error="boom")]) == dict(error="boom")
