"""SVHN: the ConvNet experiments of BinaryNet [BNN] and BinaryConnect [BC].

    python svhn.py --method binarynet                        # BinaryNet, 200 epochs, 598388 training images
    python svhn.py --method bc-det --no-extra --epochs 5 --width 0.25 --data-dir ~/svhn --out runs/svhn-bc
    python svhn.py --method binarynet-torch7                 # the BNN paper's Torch7 code (docs/torch7.md)

Reads top to bottom like the originals: hyperparameters, data, network, training (ORIGINALS.md §2.1, §2.2,
§3.3). BinaryConnect's methods see GCN + LeCun-LCN images (computed once and cached), BinaryNet raw pixels.
Memory: the full training set is 6.9 GiB in float32. BinaryNet shuffles it in place (--shuffle-parts chunks);
BinaryConnect's original shuffle copies it (twice the memory) unless --shuffle-parts is given.
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
BINARYNET = OrderedDict(  # BinaryNet/Train-time/svhn.py
    batch_size=50, alpha=.1, epsilon=1e-4, activation="binary_net.binary_tanh_unit", binary=True,
    stochastic=False, H=1., W_LR_scale="Glorot", num_epochs=200, LR_start=.001, LR_fin=1e-6)
BINARYCONNECT = OrderedDict(  # BinaryConnect/svhn.py ('float' is the same network without binarization)
    batch_size=50, alpha=.1, epsilon=1e-4, num_epochs=200, binary=True, stochastic=True, H=1.,
    W_LR_scale="Glorot", LR_start=.01, LR_fin=3e-6)
# Main_BinaryNet_SVHN.lua + Models/BinaryNet_SVHN_Model.lua (docs/torch7.md); that script runs until stopped,
# num_epochs is the Theano script's.
TORCH7 = OrderedDict(batch_size=200, stochastic=True, num_epochs=200, LR_start=2. ** -7, LR_halving_epochs=20)
# What each method changes in its family's table, and how its inputs are preprocessed (ORIGINALS.md §3.3).
METHOD_SETTINGS = {"binarynet": {}, "bc-det": dict(stochastic=False), "bc-stoch": {},
                   "float": dict(binary=False, stochastic=False)}
INPUTS = {"binarynet": "pm1", "binaryconnect": "gcn-lcn"}
# Test errors (%) published for these methods on SVHN: [BNN] Table 1 (Theano and Torch7) and [BC] Table 2.
PAPER_TEST_ERROR = {"binarynet": 2.80, "bc-det": 2.30, "bc-stoch": 2.15, "float": 2.44, "binarynet-torch7": 2.53}


def hyperparameters(method, batch_size=None, epochs=None, shuffle_parts=None):
    """The original script's table for `method`, with the command-line overrides applied."""
    if method == "binarynet-torch7":  # LR halved every LR_halving_epochs epochs instead of an LR_decay
        hp = cli.overrides(OrderedDict(TORCH7), batch_size, epochs)
        hp["shuffle_parts"] = shuffle_parts or 1
        return hp
    hp = OrderedDict(BINARYNET if cli.family(method) == "binarynet" else BINARYCONNECT)
    hp.update(METHOD_SETTINGS[method])
    cli.overrides(hp, batch_size, epochs)
    hp["LR_decay"] = (hp["LR_fin"] / hp["LR_start"]) ** (1. / hp["num_epochs"])  # as the originals compute it
    if method == "binarynet":
        hp["shuffle_parts"] = shuffle_parts or 1
    return hp


def parse_args(argv):
    p = cli.experiment_parser(__doc__.splitlines()[0], width_flag=True)
    p.add_argument("--no-extra", action="store_true",
                   help="leave out extra_32x32.mat (1.3 GB): train on 69257 images, validate on 4000")
    p.add_argument("--lcn-all-channels", action="store_true",
                   help="BinaryConnect: LCN on all three channels (the original normalized only red, §3.3)")
    p.add_argument("--shuffle-parts", type=cli.positive_int,
                   help="shuffle the training set in place in this many chunks (BinaryNet's default 1; "
                        "BinaryConnect's default is a copying shuffle); 1, 2, 4, 7 or 14 divide 598388")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    run = runfiles.Run(args.out, args.resume, "svhn_parameters.npz")  # claims --out before the long work

    np.random.seed(args.seed)
    hp = hyperparameters(args.method, args.batch_size, args.epochs, args.shuffle_parts)
    cli.print_hyperparameters(hp)

    print("Loading SVHN dataset")
    family = cli.family(args.method)
    if family == "binarynet-torch7":  # first images of each class validate; GCN + LCN (all channels) + z-score
        data = torch7_data.svhn_data(data_dir=args.data_dir, use_extra=not args.no_extra)
    else:
        data = preprocessing.svhn_data(INPUTS[family], data_dir=args.data_dir, use_extra=not args.no_extra,
                                       lcn_all_channels=args.lcn_all_channels)
    train_size = min(args.train_size or len(data["X_train"]), len(data["X_train"]))
    if family != "binarynet-torch7":  # the Torch7 code also runs the last, partial minibatch
        cli.check_batches(hp["batch_size"], training=train_size, validation=len(data["X_val"]),
                          test=len(data["X_test"]))

    print("Building the CNN...")
    widths = tuple(convnet.scaled(f, args.width) for f in convnet.SVHN_WIDTHS)
    dense_units = convnet.scaled(convnet.DENSE_UNITS, args.width)
    input_var, target_var, LR = T.tensor4("inputs"), T.matrix("targets"), T.scalar("LR")
    shuffle_parts = hp.get("shuffle_parts", args.shuffle_parts)
    info = runfiles.run_info("svhn", args.method, args.seed, hp, PAPER_TEST_ERROR[args.method], train_size,
                             data.get("files"),
                             width=args.width, conv_widths=list(widths), dense_units=dense_units,
                             shuffle_parts=shuffle_parts, use_extra=not args.no_extra,
                             lcn_all_channels=args.lcn_all_channels or family == "binarynet-torch7")
    if family == "binarynet-torch7":
        cnn, rules = binary_net_torch7.build_convnet(input_var, "svhn", widths, dense_units,
                                                     data["X_train"].shape[1:], hp["stochastic"])
        binary_net_torch7.train_and_report(cnn, rules, input_var, target_var, LR, hp, data, train_size, run, info)
        return 0
    cnn = convnet.build_convnet(family, input_var, hp, widths, dense_units, data["X_train"].shape[1:])
    binary_connect.train_and_report(cnn, input_var, target_var, LR, hp, data, train_size, run, info,
                                    shuffle_parts)
    return 0


if __name__ == "__main__":
    sys.exit(cli.main_guard(main))
