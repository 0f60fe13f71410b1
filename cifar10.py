"""CIFAR-10: the ConvNet experiments of BinaryNet [BNN] and BinaryConnect [BC].

    python cifar10.py --method binarynet                     # BinaryNet, 500 epochs, raw pixels in [-1, 1]
    python cifar10.py --method bc-stoch --epochs 5 --width 0.25 --data-dir ~/cifar --out runs/cifar-bc
    python cifar10.py --method binarynet-torch7              # the BNN paper's Torch7 code (docs/torch7.md)

Reads top to bottom like the originals: hyperparameters, data, network, training (ORIGINALS.md §2.1, §2.2,
§3.2). BinaryConnect's methods see GCN + ZCA whitened images (computed once and cached), BinaryNet raw pixels.
"""
import sys
from collections import OrderedDict

import numpy as np

from plumbing import cli, compat  # noqa: F401  (compat: Theano flags and Lasagne patches come first)
from plumbing import preprocessing, runfiles, torch7_data
from plumbing.compat import T

import binary_connect
import binary_net_torch7
import convnet

# The original scripts' settings, in their print order.
BINARYNET = OrderedDict(  # BinaryNet/Train-time/cifar10.py
    batch_size=50, alpha=.1, epsilon=1e-4, activation="binary_net.binary_tanh_unit", binary=True,
    stochastic=False, H=1., W_LR_scale="Glorot", num_epochs=500, LR_start=.001, LR_fin=3e-7)
BINARYCONNECT = OrderedDict(  # BinaryConnect/cifar10.py ('float' is the same network without binarization)
    batch_size=50, alpha=.1, epsilon=1e-4, num_epochs=500, binary=True, stochastic=True, H=1.,
    W_LR_scale="Glorot", LR_start=.003, LR_fin=2e-6)
# Main_BinaryNet_Cifar10.lua + Models/BinaryNet_Cifar10_Model.lua (docs/torch7.md); that script runs until
# stopped, num_epochs is the Theano script's.
TORCH7 = OrderedDict(batch_size=200, stochastic=True, num_epochs=500, LR_start=2. ** -6, LR_halving_epochs=50,
                     shuffle_parts=1)
# What each method changes in its family's table, and how its inputs are preprocessed (ORIGINALS.md §3.2).
METHOD_SETTINGS = {"binarynet": {}, "bc-det": dict(stochastic=False), "bc-stoch": {},
                   "float": dict(binary=False, stochastic=False)}
INPUTS = {"binarynet": "pm1", "binaryconnect": "gcn-zca"}
# Test errors (%) published for these methods on CIFAR-10: [BNN] Table 1 (Theano and Torch7) and [BC] Table 2.
PAPER_TEST_ERROR = {"binarynet": 11.40, "bc-det": 9.90, "bc-stoch": 8.27, "float": 10.64, "binarynet-torch7": 10.15}
TRAIN_SET_SIZE = 45000  # rows 0-44999 of the official training file; 45000-49999 validate


def hyperparameters(method, batch_size=None, epochs=None, train_size=None):
    """The original script's table for `method`, with the command-line overrides applied."""
    if method == "binarynet-torch7":  # LR halved every LR_halving_epochs epochs instead of an LR_decay
        hp = cli.overrides(OrderedDict(TORCH7), batch_size, epochs)
        hp["train_set_size"] = min(train_size or TRAIN_SET_SIZE, TRAIN_SET_SIZE)
        return hp
    hp = OrderedDict(BINARYNET if cli.family(method) == "binarynet" else BINARYCONNECT)
    hp.update(METHOD_SETTINGS[method])
    cli.overrides(hp, batch_size, epochs)
    hp["LR_decay"] = (hp["LR_fin"] / hp["LR_start"]) ** (1. / hp["num_epochs"])  # as the originals compute it
    hp["train_set_size"] = min(train_size or TRAIN_SET_SIZE, TRAIN_SET_SIZE)
    if method == "binarynet":
        hp["shuffle_parts"] = 1
    return hp


def main(argv=None):
    args = cli.experiment_parser(__doc__.splitlines()[0], width_flag=True).parse_args(argv)
    run = runfiles.Run(args.out, args.resume, "cifar10_parameters.npz")  # claims --out before the long work

    np.random.seed(args.seed)
    hp = hyperparameters(args.method, args.batch_size, args.epochs, args.train_size)
    cli.print_hyperparameters(hp)

    print("Loading CIFAR-10 dataset...")
    family = cli.family(args.method)
    if family == "binarynet-torch7":  # split at 45000 with a shared row, rescaled, ZCA twice; cached
        data = torch7_data.cifar10_data(data_dir=args.data_dir)
    else:
        data = preprocessing.cifar10_data(INPUTS[family], data_dir=args.data_dir)
    train_size = min(args.train_size or len(data["X_train"]), len(data["X_train"]))
    if family != "binarynet-torch7":  # the Torch7 code also runs the last, partial minibatch
        cli.check_batches(hp["batch_size"], training=train_size, validation=len(data["X_val"]),
                          test=len(data["X_test"]))

    print("Building the CNN...")
    widths = tuple(convnet.scaled(f, args.width) for f in convnet.CIFAR10_WIDTHS)
    dense_units = convnet.scaled(convnet.DENSE_UNITS, args.width)
    input_var, target_var, LR = T.tensor4("inputs"), T.matrix("targets"), T.scalar("LR")
    shuffle_parts = hp.get("shuffle_parts")
    info = runfiles.run_info("cifar10", args.method, args.seed, hp, PAPER_TEST_ERROR[args.method], train_size,
                             data.get("files"),
                             width=args.width, conv_widths=list(widths), dense_units=dense_units,
                             shuffle_parts=shuffle_parts)
    if family == "binarynet-torch7":
        cnn, rules = binary_net_torch7.build_convnet(input_var, "cifar10", widths, dense_units,
                                                     data["X_train"].shape[1:], hp["stochastic"])
        binary_net_torch7.train_and_report(cnn, rules, input_var, target_var, LR, hp, data, train_size, run, info)
        return 0
    cnn = convnet.build_convnet(family, input_var, hp, widths, dense_units, data["X_train"].shape[1:])
    binary_connect.train_and_report(cnn, input_var, target_var, LR, hp, data, train_size, run, info,
                                    shuffle_parts)
    return 0


if __name__ == "__main__":
    sys.exit(cli.main_guard(main))
