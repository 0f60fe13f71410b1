"""Permutation-invariant MNIST: the MLP experiments of BinaryNet [BNN] and BinaryConnect [BC].

    python mnist.py --method binarynet                  # BinaryNet, 3 x 4096, 1000 epochs (the original)
    python mnist.py --method bc-stoch --epochs 10 --data-dir ~/mnist --out runs/bc
    python mnist.py --runtime runs/bnn/mnist_parameters.npz --data-dir ~/mnist   # run-time kernels

Reads top to bottom like the originals: hyperparameters, data, network, training (ORIGINALS.md §2.1, §2.2).
"""
import sys
from collections import OrderedDict

import experiment

# Test errors (%) published for these methods on MNIST: [BNN] Table 1 (Theano) and [BC] Table 2.
PAPER_TEST_ERROR = {"binarynet": 0.96, "bc-det": 1.29, "bc-stoch": 1.18, "float": 1.30}


def hyperparameters(args):
    """The original scripts' settings, in their print order, with the command-line overrides applied."""
    hp = OrderedDict()
    if args.method == "binarynet":  # BinaryNet/Train-time/mnist.py
        hp.update(batch_size=100, alpha=.1, epsilon=1e-4, num_units=4096, n_hidden_layers=3, num_epochs=1000,
                  dropout_in=.2, dropout_hidden=.5, activation="binary_net.binary_tanh_unit", binary=True,
                  stochastic=False, H=1., W_LR_scale="Glorot", LR_start=.003, LR_fin=3e-7)
    else:  # BinaryConnect/mnist.py (stochastic by default; 'float' is the same network without binarization)
        hp.update(batch_size=100, alpha=.15, epsilon=1e-4, num_units=2048, n_hidden_layers=3, num_epochs=250,
                  dropout_in=0., dropout_hidden=0., binary=args.method != "float",
                  stochastic=args.method == "bc-stoch", H=1., W_LR_scale="Glorot", LR_start=.001, LR_fin=3e-6)
    hp["num_units"] = args.units or hp["num_units"]
    experiment.apply_overrides(hp, args)
    if args.method == "binarynet":
        hp.update(save_path="mnist_parameters.npz", shuffle_parts=1)
    return hp


def build_mlp(method, input_var, hp):
    """The MLPs of ORIGINALS.md §2.2, layer by layer in the originals' construction order:

    BinaryNet:      Input -> Drop(0.2) -> 3 x [BDense(4096) -> BN -> binary_tanh -> Drop(0.5)] -> BDense(10) -> BN
    BinaryConnect:  Input -> Drop(0)   -> 3 x [BDense(2048) -> BN(ReLU) -> Drop(0)]            -> BDense(10) -> BN
    (each method's own batch norm and activation: convnet.batch_norm_and_activation).
    """
    import binary_connect
    import convnet
    from compat import lasagne
    binary = dict(binary=hp["binary"], stochastic=hp["stochastic"], H=hp["H"], W_LR_scale=hp["W_LR_scale"],
                  nonlinearity=lasagne.nonlinearities.identity)
    mlp = lasagne.layers.InputLayer((None, 1, 28, 28), input_var=input_var)
    mlp = lasagne.layers.DropoutLayer(mlp, p=hp["dropout_in"])
    for _ in range(hp["n_hidden_layers"]):
        mlp = binary_connect.DenseLayer(mlp, hp["num_units"], **binary)
        mlp = convnet.batch_norm_and_activation(method, mlp, hp)
        mlp = lasagne.layers.DropoutLayer(mlp, p=hp["dropout_hidden"])
    mlp = binary_connect.DenseLayer(mlp, 10, **binary)
    return convnet.batch_norm_and_activation(method, mlp, hp, last=True)


def parse_args(argv):
    p = experiment.make_parser(__doc__.splitlines()[0], units_flag=True)
    run_time = p.add_argument_group("run time (BinaryNet paper §4): inference of a trained model with each kernel")
    run_time.add_argument("--runtime", metavar="MODEL.npz",
                          help="skip training; run the MNIST test set through a trained BinaryNet .npz")
    run_time.add_argument("--kernels", default="blas,baseline,xnor",
                          help="comma list of products to compare: blas, baseline, xnor")
    run_time.add_argument("--device", choices=("auto", "cpu", "gpu"), default="cpu", help="where the kernels run")
    run_time.add_argument("--export", metavar="FILE", help="also write the packed model (bits + thresholds)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.runtime:  # inference only (binary_inference.py); --batch-size there defaults to the whole test set
        import argparse
        import binary_inference
        options = argparse.Namespace(data_dir=args.data_dir, kernels=args.kernels, device=args.device,
                                     export=args.export, batch_size=args.batch_size or 10000)
        return binary_inference.run_from_args(args.runtime, options)
    experiment.check_out_dir(args)

    import numpy as np
    np.random.seed(args.seed)
    hp = hyperparameters(args)
    experiment.print_hyperparameters(hp)

    print("Loading MNIST dataset...")
    import datasets
    data = datasets.load_mnist(args.method, data_dir=args.data_dir)
    train_size = min(args.train_size or len(data["X_train"]), len(data["X_train"]))
    X_train, y_train = data["X_train"][:train_size], data["y_train"][:train_size]

    print("Building the MLP...")
    import binary_connect
    import binary_net
    from compat import T
    input_var, target_var, LR = T.tensor4("inputs"), T.matrix("targets"), T.scalar("LR")
    mlp = build_mlp(args.method, input_var, hp)
    train_fn, val_fn, updates = binary_connect.compile_functions(mlp, input_var, target_var, LR)

    print("Training...")
    loop = binary_net.train if args.method == "binarynet" else binary_connect.train
    summary = loop(train_fn, val_fn, mlp, hp["batch_size"], hp["LR_start"], hp["LR_decay"], hp["num_epochs"],
                   X_train, y_train, data["X_val"], data["y_val"], data["X_test"], data["y_test"],
                   state_vars=experiment.state_variables(mlp, updates), out_dir=args.out, resume=args.resume,
                   run_info=experiment.run_info("mnist", args, hp, PAPER_TEST_ERROR[args.method], train_size),
                   params_file="mnist_parameters.npz")
    print("Test error at the best validation epoch ({}): {}% (paper: {}%)".format(
        summary["best_epoch"], summary["test_error"], PAPER_TEST_ERROR[args.method]))
    return 0


if __name__ == "__main__":
    sys.exit(experiment.main_guard(main))
