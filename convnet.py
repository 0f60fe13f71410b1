"""The ConvNet of the CIFAR-10 and SVHN experiments of both papers, and the run both scripts share; its
batch-norm + activation block also serves mnist.py's MLPs.

    (2 x F1 C3) - MP2 - (2 x F2 C3) - MP2 - (2 x F3 C3) - MP2 - (2 x 1024 FC) - 10 SVM

CIFAR-10: F = 128, 256, 512; SVHN: F = 64, 128, 256 and still 1024 dense units (ORIGINALS.md §2.2, §6 #3).
Every weight layer is binary, the first and the last included; 2x2 max-pooling comes before batch norm.
"""
import binary_connect
import binary_net
import compat
import datasets
import experiment
from compat import T, lasagne

CIFAR10_WIDTHS = (128, 256, 512)
SVHN_WIDTHS = (64, 128, 256)
DENSE_UNITS = 1024


def scaled(units, width):
    """units * width rounded, at least 1 (the --width multiplier)."""
    return max(1, int(round(units * width)))


def batch_norm_and_activation(method, layer, hp, last=False):
    """BinaryNet: Lasagne-0.2 BN then a separate binary_tanh layer; BinaryConnect: its own BN with ReLU
    inside (identity for the output layer) (ORIGINALS.md §1.7, §2.1)."""
    if method == "binarynet":
        layer = compat.BatchNormLayer(layer, epsilon=hp["epsilon"], alpha=hp["alpha"])
        if last:
            return layer
        return lasagne.layers.NonlinearityLayer(layer, nonlinearity=binary_net.binary_tanh_unit)
    nonlinearity = lasagne.nonlinearities.identity if last else lasagne.nonlinearities.rectify
    return compat.BCBatchNormLayer(layer, epsilon=hp["epsilon"], alpha=hp["alpha"], nonlinearity=nonlinearity)


def build_convnet(method, input_var, hp, widths=CIFAR10_WIDTHS, dense_units=DENSE_UNITS, image_shape=(3, 32, 32)):
    """The layer stack of ORIGINALS.md §2.2; returns the output layer (the last batch norm).

    3 x [BConv(F) -> BN -> act, BConv(F) -> MaxPool 2x2 -> BN -> act], 2 x [BDense -> BN -> act],
    BDense(10) -> BN. 3x3 filters, pad 1. hp supplies binary, stochastic, H, W_LR_scale, epsilon, alpha;
    method 'binarynet' selects BinaryNet's BN and activation, anything else BinaryConnect's.
    """
    binary = dict(binary=hp["binary"], stochastic=hp["stochastic"], H=hp["H"], W_LR_scale=hp["W_LR_scale"],
                  nonlinearity=lasagne.nonlinearities.identity)
    cnn = lasagne.layers.InputLayer((None,) + tuple(image_shape), input_var=input_var)
    for filters in widths:
        cnn = binary_connect.Conv2DLayer(cnn, filters, (3, 3), pad=1, **binary)
        cnn = batch_norm_and_activation(method, cnn, hp)
        cnn = binary_connect.Conv2DLayer(cnn, filters, (3, 3), pad=1, **binary)
        cnn = lasagne.layers.MaxPool2DLayer(cnn, pool_size=(2, 2))
        cnn = batch_norm_and_activation(method, cnn, hp)
    for _ in range(2):
        cnn = binary_connect.DenseLayer(cnn, dense_units, **binary)
        cnn = batch_norm_and_activation(method, cnn, hp)
    cnn = binary_connect.DenseLayer(cnn, 10, **binary)
    return batch_norm_and_activation(method, cnn, hp, last=True)


def load(loader, args, **options):
    """Call a preprocessing loader; its PreprocessingError becomes a DataError (one line via main_guard)."""
    import preprocessing
    try:
        return loader(args.method, data_dir=args.data_dir, **options)
    except preprocessing.PreprocessingError as e:
        raise datasets.DataError(str(e))


def check_sizes(batch_size, **sets):
    """Every set must hold at least one minibatch (the originals use floor(N / batch_size) batches, §3.4)."""
    for name, rows in sets.items():
        if rows < batch_size:
            raise experiment.UsageError("the {} set has {} rows, fewer than one minibatch of {}; pass a smaller "
                                        "--batch-size".format(name, rows, batch_size))


def run(dataset, args, hp, data, widths, dense_units, paper_test_error, shuffle_parts=None, extra_info=None):
    """Build, compile and train the ConvNet on `data` (the part after "Loading ... dataset").

    BinaryNet trains with its in-place shuffle (`shuffle_parts` chunks), BinaryConnect with the copying
    shuffle unless `shuffle_parts` is given (ORIGINALS.md §1.10). Returns the results.json summary.
    """
    train_size = min(args.train_size or len(data["X_train"]), len(data["X_train"]))
    X_train, y_train = data["X_train"][:train_size], data["y_train"][:train_size]
    check_sizes(hp["batch_size"], training=train_size, validation=len(data["X_val"]), test=len(data["X_test"]))

    print("Building the CNN...")
    input_var, target_var, LR = T.tensor4("inputs"), T.matrix("targets"), T.scalar("LR")
    cnn = build_convnet(args.method, input_var, hp, widths, dense_units, data["X_train"].shape[1:])
    train_fn, val_fn, updates = binary_connect.compile_functions(cnn, input_var, target_var, LR)

    print("Training...")
    if args.method == "binarynet":
        loop, shuffle_parts = binary_net.train, shuffle_parts or 1
    else:
        loop = binary_connect.train
    info = experiment.run_info(dataset, args, hp, paper_test_error, train_size)
    info["hyperparameters"].update(width=args.width, conv_widths=list(widths), dense_units=dense_units,
                                   shuffle_parts=shuffle_parts, **(extra_info or {}))
    summary = loop(train_fn, val_fn, cnn, hp["batch_size"], hp["LR_start"], hp["LR_decay"], hp["num_epochs"],
                   X_train, y_train, data["X_val"], data["y_val"], data["X_test"], data["y_test"],
                   shuffle_parts=shuffle_parts, state_vars=experiment.state_variables(cnn, updates),
                   out_dir=args.out, resume=args.resume, run_info=info, params_file=dataset + "_parameters.npz")
    print("Test error at the best validation epoch ({}): {}% (paper: {}%)".format(
        summary["best_epoch"], summary["test_error"], paper_test_error))
    return summary
