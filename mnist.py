"""Permutation-invariant MNIST: the MLP experiments of BinaryNet [BNN] and BinaryConnect [BC].

    python mnist.py --method binarynet                  # BinaryNet, 3 x 4096, 1000 epochs (the original)
    python mnist.py --method bc-stoch --epochs 10 --data-dir ~/mnist --out runs/bc
    python mnist.py --runtime runs/bnn/mnist_parameters.npz --data-dir ~/mnist   # run-time kernels
    python mnist.py --method binarynet-torch7           # the BNN paper's Torch7 code: 3 x 2048 (docs/torch7.md)

Reads top to bottom like the originals: hyperparameters, data, network, training (ORIGINALS.md §2.1, §2.2).
"""
import sys
from collections import OrderedDict

import numpy as np

from plumbing import cli, compat  # noqa: F401  (compat: Theano flags and Lasagne patches come first)
from plumbing import datasets, runfiles, torch7_data
from plumbing.compat import T, lasagne

import binary_connect
import binary_inference
import binary_net_torch7
from batch_norm import batch_norm_and_activation

# The original scripts' settings, in their print order.
BINARYNET = OrderedDict(  # BinaryNet/Train-time/mnist.py
    batch_size=100, alpha=.1, epsilon=1e-4, num_units=4096, n_hidden_layers=3, num_epochs=1000, dropout_in=.2,
    dropout_hidden=.5, activation="binary_net.binary_tanh_unit", binary=True, stochastic=False, H=1.,
    W_LR_scale="Glorot", LR_start=.003, LR_fin=3e-7)
BINARYCONNECT = OrderedDict(  # BinaryConnect/mnist.py ('float' is the same network without binarization)
    batch_size=100, alpha=.15, epsilon=1e-4, num_units=2048, n_hidden_layers=3, num_epochs=250, dropout_in=0.,
    dropout_hidden=0., binary=True, stochastic=True, H=1., W_LR_scale="Glorot", LR_start=.001, LR_fin=3e-6)
# Main_BinaryNet_MNIST.lua + Models/BinaryNet_MNIST_Model.lua (docs/torch7.md); that script runs until stopped,
# num_epochs is the Theano script's.
TORCH7 = OrderedDict(
    batch_size=100, num_units=2048, n_hidden_layers=3, stochastic=True, num_epochs=1000, LR_start=2. ** -6,
    LR_halving_epochs=20, shuffle_parts=1)
# What each method changes in its family's table, and how its inputs are scaled (ORIGINALS.md §3.1).
METHOD_SETTINGS = {"binarynet": {}, "bc-det": dict(stochastic=False), "bc-stoch": {},
                   "float": dict(binary=False, stochastic=False)}
INPUTS = {"binarynet": "pm1", "binaryconnect": "center"}
# Test errors (%) published for these methods on MNIST: [BNN] Table 1 (Theano and Torch7 columns) and [BC] Table 2.
PAPER_TEST_ERROR = {"binarynet": 0.96, "bc-det": 1.29, "bc-stoch": 1.18, "float": 1.30, "binarynet-torch7": 1.40}


def hyperparameters(method, batch_size=None, epochs=None, units=None):
    """The original script's table for `method`, with the command-line overrides applied."""
    if method == "binarynet-torch7":  # LR halved every LR_halving_epochs epochs instead of an LR_decay
        return cli.overrides(OrderedDict(TORCH7), batch_size, epochs, num_units=units)
    hp = OrderedDict(BINARYNET if cli.family(method) == "binarynet" else BINARYCONNECT)
    hp.update(METHOD_SETTINGS[method])
    cli.overrides(hp, batch_size, epochs, num_units=units)
    hp["LR_decay"] = (hp["LR_fin"] / hp["LR_start"]) ** (1. / hp["num_epochs"])  # as the originals compute it
    if method == "binarynet":
        hp.update(save_path="mnist_parameters.npz", shuffle_parts=1)
    return hp


def build_mlp(family, input_var, hp):
    """The MLPs of ORIGINALS.md §2.2, layer by layer in the originals' construction order:

    BinaryNet:      Input -> Drop(0.2) -> 3 x [BDense(4096) -> BN -> binary_tanh -> Drop(0.5)] -> BDense(10) -> BN
    BinaryConnect:  Input -> Drop(0)   -> 3 x [BDense(2048) -> BN(ReLU) -> Drop(0)]            -> BDense(10) -> BN
    """
    binary = dict(binary=hp["binary"], stochastic=hp["stochastic"], H=hp["H"], W_LR_scale=hp["W_LR_scale"],
                  nonlinearity=lasagne.nonlinearities.identity)
    mlp = lasagne.layers.InputLayer((None, 1, 28, 28), input_var=input_var)
    mlp = lasagne.layers.DropoutLayer(mlp, p=hp["dropout_in"])
    for _ in range(hp["n_hidden_layers"]):
        mlp = binary_connect.DenseLayer(mlp, hp["num_units"], **binary)
        mlp = batch_norm_and_activation(family, mlp, hp["epsilon"], hp["alpha"])
        mlp = lasagne.layers.DropoutLayer(mlp, p=hp["dropout_hidden"])
    mlp = binary_connect.DenseLayer(mlp, 10, **binary)
    return batch_norm_and_activation(family, mlp, hp["epsilon"], hp["alpha"], last=True)


def parse_args(argv):
    p = cli.experiment_parser(__doc__.splitlines()[0], units_flag=True)
    run_time = p.add_argument_group("run time (BinaryNet paper §4): inference of a trained model with each kernel")
    run_time.add_argument("--runtime", metavar="MODEL.npz",
                          help="skip training; run the MNIST test set through a trained BinaryNet .npz")
    binary_inference.add_arguments(run_time)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.runtime:  # inference only (binary_inference.py); --batch-size there defaults to the whole test set
        return binary_inference.run_from_args(args.runtime, args)
    run = runfiles.Run(args.out, args.resume, "mnist_parameters.npz")  # claims --out before the long work

    np.random.seed(args.seed)
    hp = hyperparameters(args.method, args.batch_size, args.epochs, args.units)
    cli.print_hyperparameters(hp)

    print("Loading MNIST dataset...")
    family = cli.family(args.method)
    if family == "binarynet-torch7":
        data = torch7_data.mnist_data(data_dir=args.data_dir)
    else:
        data = datasets.load_mnist(INPUTS[family], data_dir=args.data_dir)
    train_size = min(args.train_size or len(data["X_train"]), len(data["X_train"]))
    if family != "binarynet-torch7":  # the Torch7 code also runs the last, partial minibatch
        cli.check_batches(hp["batch_size"], training=train_size, validation=len(data["X_val"]),
                          test=len(data["X_test"]))

    print("Building the MLP...")
    input_var, target_var, LR = T.tensor4("inputs"), T.matrix("targets"), T.scalar("LR")
    info = runfiles.run_info("mnist", args.method, args.seed, hp, PAPER_TEST_ERROR[args.method], train_size,
                             data.get("files"))
    if family == "binarynet-torch7":
        mlp, rules = binary_net_torch7.build_mlp(input_var, hp["num_units"], hp["n_hidden_layers"], hp["stochastic"])
        binary_net_torch7.train_and_report(mlp, rules, input_var, target_var, LR, hp, data, train_size, run, info)
        return 0
    mlp = build_mlp(family, input_var, hp)
    binary_connect.train_and_report(mlp, input_var, target_var, LR, hp, data, train_size, run, info,
                                    shuffle_parts=hp.get("shuffle_parts"))
    return 0


if __name__ == "__main__":
    sys.exit(cli.main_guard(main))
