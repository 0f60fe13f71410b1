"""CIFAR-10: the ConvNet experiments of BinaryNet [BNN] and BinaryConnect [BC].

    python cifar10.py --method binarynet                     # BinaryNet, 500 epochs, raw pixels in [-1, 1]
    python cifar10.py --method bc-stoch --epochs 5 --width 0.25 --data-dir ~/cifar --out runs/cifar-bc

Reads top to bottom like the originals: hyperparameters, data, network, training (ORIGINALS.md §2.1, §2.2,
§3.2). BinaryConnect's methods see GCN + ZCA whitened images (computed once and cached), BinaryNet raw pixels.
"""
import sys
from collections import OrderedDict

import experiment

# Test errors (%) published for these methods on CIFAR-10: [BNN] Table 1 (Theano) and [BC] Table 2.
PAPER_TEST_ERROR = {"binarynet": 11.40, "bc-det": 9.90, "bc-stoch": 8.27, "float": 10.64}
TRAIN_SET_SIZE = 45000  # rows 0-44999 of the official training file; 45000-49999 validate


def hyperparameters(args):
    """The original scripts' settings, in their print order, with the command-line overrides applied."""
    hp = OrderedDict()
    if args.method == "binarynet":  # BinaryNet/Train-time/cifar10.py
        hp.update(batch_size=50, alpha=.1, epsilon=1e-4, activation="binary_net.binary_tanh_unit", binary=True,
                  stochastic=False, H=1., W_LR_scale="Glorot", num_epochs=500, LR_start=.001, LR_fin=3e-7)
    else:  # BinaryConnect/cifar10.py (stochastic by default; 'float' is the same network without binarization)
        hp.update(batch_size=50, alpha=.1, epsilon=1e-4, num_epochs=500, binary=args.method != "float",
                  stochastic=args.method == "bc-stoch", H=1., W_LR_scale="Glorot", LR_start=.003, LR_fin=2e-6)
    experiment.apply_overrides(hp, args)
    hp["train_set_size"] = min(args.train_size or TRAIN_SET_SIZE, TRAIN_SET_SIZE)
    if args.method == "binarynet":
        hp["shuffle_parts"] = 1
    return hp


def main(argv=None):
    args = experiment.make_parser(__doc__.splitlines()[0], width_flag=True).parse_args(argv)
    experiment.check_out_dir(args)

    import numpy as np
    np.random.seed(args.seed)
    hp = hyperparameters(args)
    experiment.print_hyperparameters(hp)

    print("Loading CIFAR-10 dataset...")
    import convnet
    import preprocessing
    data = convnet.load(preprocessing.cifar10_data, args)

    widths = tuple(convnet.scaled(f, args.width) for f in convnet.CIFAR10_WIDTHS)
    dense_units = convnet.scaled(convnet.DENSE_UNITS, args.width)
    convnet.run("cifar10", args, hp, data, widths, dense_units, PAPER_TEST_ERROR[args.method])
    return 0


if __name__ == "__main__":
    sys.exit(experiment.main_guard(main))
