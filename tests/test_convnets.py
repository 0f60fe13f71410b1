"""The ConvNets of cifar10.py / svhn.py (convnet.py): structure against ORIGINALS.md §2.2-§2.4, learning on a
generated problem with every method, binary effective weights, and the two scripts' command lines."""
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import scipy.io

import compat  # noqa: F401
from compat import T, lasagne, theano

import binary_connect
import cifar10
import convnet
import experiment
import svhn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("binarynet", "bc-det", "bc-stoch", "float")


def hp_for(method):
    return dict(binary=method != "float", stochastic=method == "bc-stoch", H=1., W_LR_scale="Glorot",
                epsilon=1e-4, alpha=.1)


def weight_layers(net):
    return [layer for layer in lasagne.layers.get_all_layers(net) if hasattr(layer, "W")]


def total_size(params):
    return sum(p.get_value(borrow=True).size for p in params)


# --------------------------------------------------------------------------- structure of the full-size stacks
@pytest.mark.parametrize("method", ["binarynet", "bc-det"])
@pytest.mark.parametrize("widths, n_binary, n_units", [(convnet.CIFAR10_WIDTHS, 14022016, 3850),
                                                       (convnet.SVHN_WIDTHS, 6397632, 2954)])
def test_parameter_counts_match_the_spec(method, widths, n_binary, n_units):
    """ORIGINALS.md §2.4: binary W, biases and 4 BN vectors per unit; trainable = W + b + beta + gamma."""
    net = convnet.build_convnet(method, T.tensor4(), hp_for(method), widths)
    assert total_size(lasagne.layers.get_all_params(net, binary=True)) == n_binary
    others = lasagne.layers.get_all_params(net, trainable=True)
    assert total_size(others) == 3 * n_units                      # b, beta, gamma; W has only the 'binary' tag
    assert total_size(lasagne.layers.get_all_params(net)) == n_binary + 5 * n_units
    assert n_binary + 3 * n_units == {14022016: 14033566, 6397632: 6406494}[n_binary]


def test_float_network_trains_its_weights_with_the_other_parameters():
    net = convnet.build_convnet("float", T.tensor4(), hp_for("float"), convnet.SVHN_WIDTHS)
    assert lasagne.layers.get_all_params(net, binary=True) == []
    assert total_size(lasagne.layers.get_all_params(net, trainable=True)) == 6406494


@pytest.mark.parametrize("widths, conv_scales, dense_scales", [
    (convnet.CIFAR10_WIDTHS, [28.035692, 39.191837, 48.0, 55.425625, 67.88225, 78.383675],
     [78.383675, 36.950417, 26.255157]),
    (convnet.SVHN_WIDTHS, [20.049938, 27.712812, 33.941124, 39.191837, 48.0, 55.425625],
     [58.42374, 36.950417, 26.255157])])
def test_glorot_learning_rate_scales_match_the_spec(widths, conv_scales, dense_scales):
    """ORIGINALS.md §2.3, conv fans k*k*C (no pool correction), dense fans from the flattened input."""
    net = convnet.build_convnet("bc-stoch", T.tensor4(), hp_for("bc-stoch"), widths)
    layers = weight_layers(net)
    assert [type(layer) for layer in layers] == [binary_connect.Conv2DLayer] * 6 + [binary_connect.DenseLayer] * 3
    np.testing.assert_allclose([layer.W_LR_scale for layer in layers], conv_scales + dense_scales, rtol=1e-6)
    assert all(layer.H == 1 for layer in layers)


def layer_summary(net):
    names = {lasagne.layers.InputLayer: "in", binary_connect.Conv2DLayer: "conv", binary_connect.DenseLayer: "dense",
             lasagne.layers.MaxPool2DLayer: "pool", compat.BatchNormLayer: "bn", compat.BCBatchNormLayer: "bn",
             lasagne.layers.NonlinearityLayer: "act"}
    return [(names[type(layer)], layer.output_shape[1:]) for layer in lasagne.layers.get_all_layers(net)]


def test_binarynet_stack_pools_before_batch_norm_with_the_spec_shapes():
    net = convnet.build_convnet("binarynet", T.tensor4(), hp_for("binarynet"), convnet.CIFAR10_WIDTHS)
    expected = [("in", (3, 32, 32))]
    for f, size in ((128, 32), (256, 16), (512, 8)):
        expected += [("conv", (f, size, size)), ("bn", (f, size, size)), ("act", (f, size, size)),
                     ("conv", (f, size, size)), ("pool", (f, size // 2, size // 2)),
                     ("bn", (f, size // 2, size // 2)), ("act", (f, size // 2, size // 2))]
    expected += [("dense", (1024,)), ("bn", (1024,)), ("act", (1024,))] * 2 + [("dense", (10,)), ("bn", (10,))]
    assert layer_summary(net) == expected
    acts = [layer for layer in lasagne.layers.get_all_layers(net)
            if isinstance(layer, lasagne.layers.NonlinearityLayer)]
    assert len(acts) == 8 and all(layer.nonlinearity.__name__ == "binary_tanh_unit" for layer in acts)


def test_binaryconnect_stack_has_relu_inside_batch_norm_and_identity_at_the_output():
    net = convnet.build_convnet("bc-det", T.tensor4(), hp_for("bc-det"), convnet.SVHN_WIDTHS)
    kinds = [kind for kind, _ in layer_summary(net)]
    assert kinds == ["in"] + ["conv", "bn", "conv", "pool", "bn"] * 3 + ["dense", "bn"] * 3
    bns = [layer for layer in lasagne.layers.get_all_layers(net) if isinstance(layer, compat.BCBatchNormLayer)]
    assert [bn.nonlinearity for bn in bns] == [lasagne.nonlinearities.rectify] * 8 + [lasagne.nonlinearities.identity]
    assert all(layer.output_shape[1] == 1024 for layer in weight_layers(net)[6:8])   # SVHN keeps 1024 dense units
    assert all(bn.epsilon == 1e-4 and bn.alpha == .1 for bn in bns)


def test_width_multiplier_scales_and_keeps_one_unit():
    assert [convnet.scaled(f, 0.0625) for f in convnet.CIFAR10_WIDTHS + (1024,)] == [8, 16, 32, 64]
    assert convnet.scaled(64, 0.001) == 1 and convnet.scaled(1024, 1.0) == 1024


# --------------------------------------------------------------------------- a tiny ConvNet learns
N_CLASSES = 4


def template_problem(n, seed):
    """Each class is a fixed random +-1 pattern on 3x8x8 images plus Gaussian noise; targets in {-1, +1}."""
    templates = np.sign(np.random.RandomState(0).randn(N_CLASSES, 3, 8, 8))
    rng = np.random.RandomState(seed)
    labels = rng.randint(0, N_CLASSES, n)
    X = (templates[labels] + 0.5 * rng.randn(n, 3, 8, 8)).astype(np.float32)
    y = -np.ones((n, 10), np.float32)
    y[np.arange(n), labels] = 1
    return X, y


@pytest.fixture(scope="module", params=METHODS)
def trained(request):
    """A width-1/16 CIFAR ConvNet on 8x8 images trained for 5 epochs of 10 minibatches."""
    method = request.param
    np.random.seed(1234)
    x, t, lr = T.tensor4("x"), T.matrix("t"), T.scalar("LR")
    net = convnet.build_convnet(method, x, hp_for(method), widths=(8, 16, 32), dense_units=64,
                                image_shape=(3, 8, 8))
    train_fn, val_fn, _ = binary_connect.compile_functions(net, x, t, lr)
    X, y = template_problem(200, 1)
    LR = 0.03 if method == "bc-stoch" else 0.01      # sampled weights need bigger steps to move off zero
    losses = [binary_connect.epoch_pass(train_fn, X, y, 20, LR=LR) for _ in range(5)]
    X_new, y_new = template_problem(100, 2)
    forward = theano.function([x], lasagne.layers.get_output(net, deterministic=False))   # training graph
    train_graph_error = 100. * np.mean(np.argmax(forward(X_new), 1) != np.argmax(y_new, 1))
    return dict(method=method, net=net, forward=forward, losses=losses, train_graph_error=train_graph_error,
                error=binary_connect.epoch_pass(val_fn, X_new, y_new, 20)[1])


def test_tiny_convnet_learns_with_each_method(trained):
    chance = 100. * (N_CLASSES - 1) / N_CLASSES
    assert trained["losses"][-1] < 0.5 * trained["losses"][0], trained["losses"]
    if trained["method"] == "bc-stoch":
        # Stochastic BC samples new signs at every call, and is evaluated with its real weights (ORIGINALS.md
        # §1.1) and BN statistics gathered with sampled weights; with 8-filter layers and 50 steps it is noisy
        # (about 50% error here), so it must only beat chance (75%) by more than 3 standard deviations.
        assert trained["train_graph_error"] < 60 and trained["error"] < 60, trained
    else:
        assert trained["train_graph_error"] < chance / 2, (trained["method"], trained["train_graph_error"])
        assert trained["error"] < chance / 2, (trained["method"], trained["error"])


def test_conv_weights_are_plus_minus_one_in_the_training_graph(trained):
    """The training graph propagates Wb = sign(W) (0 -> +1; stochastic: random signs); W itself stays real."""
    net = trained["net"]
    lasagne.layers.get_output(net, deterministic=False)          # refreshes layer.Wb with the training graph's
    convs = [layer for layer in weight_layers(net) if isinstance(layer, binary_connect.Conv2DLayer)]
    Wb = theano.function([], [layer.Wb for layer in convs])()
    for layer, wb in zip(convs, Wb):
        W = layer.W.get_value()
        if trained["method"] == "float":
            np.testing.assert_array_equal(wb, W)
            continue
        assert set(np.unique(wb)) == {-1., 1.}
        assert np.abs(W).min() < 1 and not np.all(np.abs(W) == 1)  # the real weights are not binary
        if trained["method"] in ("binarynet", "bc-det"):
            np.testing.assert_array_equal(wb, np.where(W >= 0, 1., -1.))


def test_training_output_depends_only_on_the_signs_of_the_weights(trained):
    """Rescaling every weight by a positive factor changes nothing for the deterministic binary methods."""
    net = trained["net"]
    forward = trained["forward"]
    X, _ = template_problem(20, 3)
    before = forward(X)
    if trained["method"] == "bc-stoch":        # instead: a new draw of the binary weights at every call
        assert not np.array_equal(forward(X), before)
        return
    rng = np.random.RandomState(4)
    saved = [layer.W.get_value() for layer in weight_layers(net)]
    for layer, W in zip(weight_layers(net), saved):
        layer.W.set_value((W * rng.uniform(0.1, 1., W.shape)).astype(np.float32))
    after = forward(X)
    for layer, W in zip(weight_layers(net), saved):
        layer.W.set_value(W)
    if trained["method"] == "float":
        assert not np.allclose(after, before, atol=1e-3)
    else:
        np.testing.assert_array_equal(after, before)


# --------------------------------------------------------------------------- the scripts' settings
def parsed(module, *argv):
    parse = getattr(module, "parse_args", None)
    if parse is None:
        return experiment.make_parser("", width_flag=True).parse_args(list(argv))
    return parse(list(argv))


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
    """ORIGINALS.md §2.1: values and the order in which the original scripts print them."""
    hp = module.hyperparameters(parsed(module, "--method", method))
    assert list(hp) == names.split()
    for name, expected in zip(names.split(), values):
        if isinstance(expected, float):
            assert hp[name] == pytest.approx(expected, rel=1e-8), name
        else:
            assert hp[name] == expected and type(hp[name]) is type(expected), name


# --------------------------------------------------------------------------- the scripts on tiny official files
def write_cifar_tarball(folder, rows=20, seed=0):
    """cifar-10-python.tar.gz: five training batches and a test batch, pickled dicts with bytes keys (§3.2)."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    with tarfile.open(os.path.join(folder, "cifar-10-python.tar.gz"), "w:gz") as tar:
        for name in ["data_batch_%d" % i for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.randint(0, 256, (rows, 3072)).astype(np.uint8),
                     b"labels": [int(v) for v in rng.randint(0, 10, rows)]}
            blob = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo("cifar-10-batches-py/" + name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def write_svhn_mats(folder, per_class=402, n_test=20, seed=0):
    """train_32x32.mat / test_32x32.mat: X uint8 (32, 32, 3, N), y uint8 (N, 1) in 1..10 (§3.3)."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    for name, labels in (("train", np.repeat(np.arange(1, 11), per_class)), ("test", rng.randint(1, 11, n_test))):
        X = rng.randint(0, 256, (32, 32, 3, len(labels))).astype(np.uint8)
        scipy.io.savemat(os.path.join(folder, name + "_32x32.mat"),
                         {"X": X, "y": labels.reshape(-1, 1).astype(np.uint8)})


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


def test_cifar10_script_on_a_tiny_tarball(tmp_path, monkeypatch, capsys):
    import datasets
    monkeypatch.setattr(datasets, "DEFAULT_DATA_DIR", str(tmp_path / "cache"))   # the ZCA cache goes here
    write_cifar_tarball(str(tmp_path / "raw"))
    out = str(tmp_path / "run")
    status = experiment.main_guard(lambda: cifar10.main(["--method", "bc-stoch", "--epochs", "1", "--width", "0.0625",
                                                         "--train-size", "40", "--batch-size", "10", "--data-dir",
                                                         str(tmp_path / "raw"), "--out", out]))
    printed = capsys.readouterr().out
    assert status == 0
    assert printed.splitlines()[11:13] == ["train_set_size = 40", "Loading CIFAR-10 dataset..."]
    check_run(out, "cifar10", "bc-stoch", 40, printed)


def test_svhn_script_on_tiny_mat_files(tmp_path, monkeypatch, capsys):
    import datasets
    monkeypatch.setattr(datasets, "DEFAULT_DATA_DIR", str(tmp_path / "cache"))
    write_svhn_mats(str(tmp_path / "raw"), per_class=404)     # 4040 rows: 4000 validate (400 per class), 40 train
    out = str(tmp_path / "run")
    status = experiment.main_guard(lambda: svhn.main(["--method", "binarynet", "--epochs", "1", "--width", "0.0625",
                                                      "--no-extra", "--shuffle-parts", "2", "--batch-size", "20",
                                                      "--data-dir", str(tmp_path / "raw"), "--out", out]))
    printed = capsys.readouterr().out
    assert status == 0
    assert printed.splitlines()[12:14] == ["shuffle_parts = 2", "Loading SVHN dataset"]
    summary = check_run(out, "svhn", "binarynet", 40, printed)
    assert summary["hyperparameters"]["use_extra"] is False


def run_script(*argv):
    return subprocess.run([sys.executable] + list(argv), cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv, fragment", [
    (["cifar10.py", "--width", "0"], "--width: must be positive"),
    (["svhn.py", "--method", "foo"], "invalid choice: 'foo'"),
    (["svhn.py", "--shuffle-parts", "0"], "--shuffle-parts: must be positive"),
    (["cifar10.py", "--data-dir", "EMPTY"], "CIFAR-10 not found in"),
    (["svhn.py", "--data-dir", "EMPTY", "--no-extra"], "EMPTY"),
])
def test_bad_values_give_one_line_and_a_non_zero_exit(tmp_path, argv, fragment):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [str(empty) if a == "EMPTY" else a for a in argv]
    result = run_script(*argv)
    assert result.returncode != 0
    err = result.stderr.strip().splitlines()
    err = [line for line in err if "WARNING (theano" not in line]
    assert len(err) == 1 and fragment.replace("EMPTY", str(empty)) in err[0], result.stderr


def test_batch_larger_than_a_set_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    write_cifar_tarball(str(tmp_path / "raw"))
    status = experiment.main_guard(lambda: cifar10.main(["--method", "binarynet", "--epochs", "1", "--data-dir",
                                                         str(tmp_path / "raw")]))
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: the validation set has 10 rows, fewer than one minibatch of 50; pass a smaller --batch-size")
