"""SVHN: the ConvNet experiments of BinaryNet [BNN] and BinaryConnect [BC].

    python svhn.py --method binarynet                        # BinaryNet, 200 epochs, 598388 training images
    python svhn.py --method bc-det --no-extra --epochs 5 --width 0.25 --data-dir ~/svhn --out runs/svhn-bc

Reads top to bottom like the originals: hyperparameters, data, network, training (ORIGINALS.md §2.1, §2.2,
§3.3). BinaryConnect's methods see GCN + LeCun-LCN images (computed once and cached), BinaryNet raw pixels.
Memory: the full training set is 6.9 GiB in float32. BinaryNet shuffles it in place (--shuffle-parts chunks);
BinaryConnect's original shuffle copies it (twice the memory) unless --shuffle-parts is given.
"""
import sys
from collections import OrderedDict

import experiment

# Test errors (%) published for these methods on SVHN: [BNN] Table 1 (Theano) and [BC] Table 2.
PAPER_TEST_ERROR = {"binarynet": 2.80, "bc-det": 2.30, "bc-stoch": 2.15, "float": 2.44}


def hyperparameters(args):
    """The original scripts' settings, in their print order, with the command-line overrides applied."""
    hp = OrderedDict()
    if args.method == "binarynet":  # BinaryNet/Train-time/svhn.py
        hp.update(batch_size=50, alpha=.1, epsilon=1e-4, activation="binary_net.binary_tanh_unit", binary=True,
                  stochastic=False, H=1., W_LR_scale="Glorot", num_epochs=200, LR_start=.001, LR_fin=1e-6)
    else:  # BinaryConnect/svhn.py (stochastic by default; 'float' is the same network without binarization)
        hp.update(batch_size=50, alpha=.1, epsilon=1e-4, num_epochs=200, binary=args.method != "float",
                  stochastic=args.method == "bc-stoch", H=1., W_LR_scale="Glorot", LR_start=.01, LR_fin=3e-6)
    experiment.apply_overrides(hp, args)
    if args.method == "binarynet":
        hp["shuffle_parts"] = args.shuffle_parts or 1
    return hp


def parse_args(argv):
    p = experiment.make_parser(__doc__.splitlines()[0], width_flag=True)
    p.add_argument("--no-extra", action="store_true",
                   help="leave out extra_32x32.mat (1.3 GB): train on 69257 images, validate on 4000")
    p.add_argument("--lcn-all-channels", action="store_true",
                   help="BinaryConnect: LCN on all three channels (the original normalized only red, §3.3)")
    p.add_argument("--shuffle-parts", type=experiment.positive_int,
                   help="shuffle the training set in place in this many chunks (BinaryNet's default 1; "
                        "BinaryConnect's default is a copying shuffle); 1, 2, 4, 7 or 14 divide 598388")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    experiment.check_out_dir(args)

    import numpy as np
    np.random.seed(args.seed)
    hp = hyperparameters(args)
    experiment.print_hyperparameters(hp)

    print("Loading SVHN dataset")
    import convnet
    import preprocessing
    data = convnet.load(preprocessing.svhn_data, args, use_extra=not args.no_extra,
                        lcn_all_channels=args.lcn_all_channels)

    widths = tuple(convnet.scaled(f, args.width) for f in convnet.SVHN_WIDTHS)
    dense_units = convnet.scaled(convnet.DENSE_UNITS, args.width)
    convnet.run("svhn", args, hp, data, widths, dense_units, PAPER_TEST_ERROR[args.method],
                shuffle_parts=args.shuffle_parts,
                extra_info=dict(use_extra=not args.no_extra, lcn_all_channels=args.lcn_all_channels))
    return 0


if __name__ == "__main__":
    sys.exit(experiment.main_guard(main))
