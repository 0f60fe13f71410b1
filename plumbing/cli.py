"""The command line every script shares: one parser class, value checks, the experiments' common flags, the
start-of-run printout, and the guard that turns an ArchiveError into one line and a non-zero exit."""
import argparse
import os
import signal
import sys
from collections import OrderedDict

from plumbing.errors import ArchiveError, UsageError

# The methods of the two papers, and the original code each one reproduces (its "family").
METHODS = OrderedDict([
    ("binarynet", ("binarynet", "binary weights and activations [BNN] (BinaryNet/Train-time)")),
    ("bc-det", ("binaryconnect", "BinaryConnect with deterministic binary weights [BC]")),
    ("bc-stoch", ("binaryconnect", "BinaryConnect with stochastic binary weights [BC]")),
    ("float", ("binaryconnect", "the BinaryConnect network without binarization (the 'no regularizer' row)")),
    ("binarynet-torch7", ("binarynet-torch7", "the BNN paper's own Torch7 algorithm: stochastic activations, "
                                              "shift-based batch norm and AdaMax (docs/torch7.md)")),
])
SEED_MAX = 2 ** 32 - 1  # numpy.random.seed accepts 0 .. 2**32 - 1


def family(method):
    """'binarynet', 'binaryconnect' or 'binarynet-torch7': which original code a method's network, data and loop
    come from."""
    return METHODS[method][0]


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def seed_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be between 0 and {SEED_MAX}, got {value}")
    return value


def positive_float(text, largest=1e6):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not 0 < value <= largest:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be a number above 0 and at most {largest:g}, got {text}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (usage is one --help away). Every command uses this class."""

    def __init__(self, description, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        if kwargs["formatter_class"] is None:
            del kwargs["formatter_class"]
        super().__init__(description=description, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def experiment_parser(description, units_flag=False, width_flag=False):
    """The flags of mnist.py, cifar10.py and svhn.py."""
    p = Parser(description)
    p.add_argument("--method", choices=list(METHODS), default="binarynet",
                   help="; ".join(f"{name}: {text}" for name, (_, text) in METHODS.items()))
    p.add_argument("--epochs", type=positive_int, help="number of epochs (default: the original script's)")
    p.add_argument("--train-size", type=positive_int, help="use only the first N training rows (default: all)")
    p.add_argument("--batch-size", type=positive_int, help="minibatch size (default: the original script's)")
    if units_flag:
        p.add_argument("--units", type=positive_int, help="hidden units per layer (default: the original's)")
    if width_flag:
        p.add_argument("--width", type=positive_float, default=1.0,
                       help="multiply every layer's width by this factor (e.g. 0.25 for short CPU runs)")
    p.add_argument("--seed", type=seed_int, default=1234, help="numpy seed (the originals used 1234)")
    p.add_argument("--data-dir", help="read the official data files from this folder instead of downloading")
    p.add_argument("--out", help="folder for results.json, log.jsonl, the best parameters and the checkpoint")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    return p


def overrides(hp, batch_size=None, epochs=None, **values):
    """--batch-size, --epochs and any other given value over the original's; None keeps the original."""
    hp["batch_size"] = batch_size or hp["batch_size"]
    hp["num_epochs"] = epochs or hp["num_epochs"]
    hp.update((name, value) for name, value in values.items() if value is not None)
    return hp


def print_hyperparameters(hp):
    """One `name = value` line each, in the originals' order (ORIGINALS.md §1.11)."""
    for name, value in hp.items():
        print(name + " = " + str(value))


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm's notice before a time limit or preemption, `docker stop`, `kill`)."""


def _terminate(signum, frame):
    raise Terminated()


def main_guard(main, *args):
    """Run main(*args); an ArchiveError becomes one line on stderr and exit status 2, Ctrl-C status 130,
    SIGTERM 143. Finished epochs are committed to disk as they end, so an interruption loses only the
    running epoch (plumbing/runfiles.py)."""
    sys.stdout.reconfigure(line_buffering=True)  # epoch blocks appear at once, also when piped to a log
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return main(*args)
    except ArchiveError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except KeyboardInterrupt as e:
        stopped = "terminated" if isinstance(e, Terminated) else "interrupted"
        sys.stderr.write(f"{stopped}: the last finished epoch is kept; rerun with --resume to continue\n")
        return 143 if isinstance(e, Terminated) else 130
    except MemoryError:
        sys.stderr.write("error: out of memory; use a smaller --train-size / --batch-size or shuffle in parts\n")
        return 3


def check_batches(batch_size, **sets):
    """Every set must hold at least one minibatch (the originals use floor(N / batch_size) batches, §3.4)."""
    for name, rows in sets.items():
        if rows < batch_size:
            raise UsageError(f"the {name} set has {rows} rows, fewer than one minibatch of {batch_size}; pass a "
                             "smaller --batch-size")


def load_averages():
    """The 1, 5 and 15 minute load averages, two decimals each."""
    return " ".join(f"{load:.2f}" for load in os.getloadavg())
