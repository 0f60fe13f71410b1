"""What the three experiment scripts (mnist.py, cifar10.py, svhn.py) share: the command line, the start-of-run
printout, the list of state variables a checkpoint must hold, and the one-line error handling."""
import argparse
import os
import platform
import sys
from collections import OrderedDict

METHODS = ("binarynet", "bc-det", "bc-stoch", "float")


class UsageError(Exception):
    """A bad command-line value (one-line message)."""


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number, got {!r}".format(text))
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive, got {}".format(value))
    return value


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number, got {!r}".format(text))
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive, got {}".format(text))
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are a single line (usage is one --help away)."""

    def error(self, message):
        self.exit(2, "{}: error: {} (see --help)\n".format(self.prog, message))


def make_parser(description, units_flag=False, width_flag=False):
    p = OneLineParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--method", choices=METHODS, default="binarynet",
                   help="binarynet: binary weights and activations [BNN]; bc-det / bc-stoch: BinaryConnect with "
                        "deterministic / stochastic binary weights [BC]; float: the same BinaryConnect network "
                        "without binarization (the papers' 'no regularizer' baseline)")
    p.add_argument("--epochs", type=positive_int, help="number of epochs (default: the original script's)")
    p.add_argument("--train-size", type=positive_int, help="use only the first N training rows (default: all)")
    p.add_argument("--batch-size", type=positive_int, help="minibatch size (default: the original script's)")
    if units_flag:
        p.add_argument("--units", type=positive_int, help="hidden units per layer (default: the original's)")
    if width_flag:
        p.add_argument("--width", type=positive_float, default=1.0,
                       help="multiply every layer's width by this factor (e.g. 0.25 for short CPU runs)")
    p.add_argument("--seed", type=int, default=1234, help="numpy seed (the originals used 1234)")
    p.add_argument("--data-dir", help="read the official data files from this folder instead of downloading")
    p.add_argument("--out", help="folder for results.json, log.jsonl, the best parameters and the checkpoint")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    return p


def check_out_dir(args):
    """--resume needs --out; an --out holding an unfinished run needs --resume (nothing is overwritten)."""
    import results
    if args.resume and not args.out:
        raise UsageError("--resume needs --out pointing at the interrupted run's folder")
    if args.out and not args.resume and os.path.exists(os.path.join(args.out, results.CHECKPOINT)):
        raise UsageError("{} already holds a run; add --resume to continue it, or choose another --out".format(
            args.out))


def apply_overrides(hp, args):
    """--batch-size and --epochs over the original's values, then LR_decay = (LR_fin / LR_start)^(1 / epochs)
    (the originals compute it from num_epochs, ORIGINALS.md §1.9)."""
    import binary_connect
    hp["batch_size"] = args.batch_size or hp["batch_size"]
    hp["num_epochs"] = args.epochs or hp["num_epochs"]
    hp["LR_decay"] = binary_connect.lr_decay(hp["LR_start"], hp["LR_fin"], hp["num_epochs"])
    return hp


def print_hyperparameters(hp):
    for name, value in hp.items():
        if name == "activation":
            print("activation = " + value)
        else:
            print(name + " = " + str(value))


def state_variables(model, updates):
    """Every shared variable whose value a resumed run needs: parameters (incl. batch-norm statistics),
    optimizer state (Adam's m, v and step counters) and the layers' random-stream states."""
    import lasagne
    seen, out = set(), []
    candidates = list(lasagne.layers.get_all_params(model)) + list(updates.keys())
    for layer in lasagne.layers.get_all_layers(model):
        srng = getattr(layer, "_srng", None)
        if srng is not None:
            candidates += [update[0] for update in srng.state_updates]
    for var in candidates:
        if id(var) not in seen:
            seen.add(id(var))
            out.append(var)
    return out


def run_info(dataset, args, hp, paper_test_error, train_size):
    import compat
    import numpy
    import theano
    hyper = OrderedDict((k, v) for k, v in hp.items())
    hyper["seed"] = args.seed
    return dict(dataset=dataset, method=args.method, epochs=hp["num_epochs"], train_size=train_size,
                paper_test_error=paper_test_error, hyperparameters=hyper, command=" ".join(sys.argv),
                environment=dict(python=platform.python_version(), numpy=numpy.__version__,
                                 theano=theano.__version__, blas=compat.BLAS_NAME, machine=platform.machine()))


def main_guard(main):
    """Run main(); turn expected failures into one line on stderr and a non-zero exit status."""
    sys.stdout.reconfigure(line_buffering=True)  # epoch blocks appear at once, also when piped to a log
    import results
    errors = [UsageError, results.RunError]
    for module, name in (("datasets", "DataError"), ("preprocessing", "PreprocessingError")):
        try:
            errors.append(getattr(__import__(module), name))
        except ImportError:
            pass
    try:
        return main()
    except tuple(errors) as e:
        sys.stderr.write("error: {}\n".format(e))
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: the last finished epoch is kept; rerun with --resume to continue\n")
        return 130
    except MemoryError:
        sys.stderr.write("error: out of memory; use a smaller --train-size / --batch-size or shuffle in parts\n")
        return 3
