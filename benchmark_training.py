"""Training speed and memory of the papers' networks on this machine.

    python benchmark_training.py                                   # all six networks, paper batch sizes
    python benchmark_training.py --networks bnn-mnist,bc-cifar10 --repeats 5 --width 0.25
    python benchmark_training.py --peer              # side by side with Larq/TensorFlow (`make peer` first)

For each network (the MNIST MLPs of mnist.py, the ConvNets of cifar10.py and svhn.py, with the original
scripts' hyperparameters, ORIGINALS.md §2.1-§2.2): seconds per minibatch of train_fn (forward, backward and
both Adam updates), the median over --repeats calls after one warm-up call, on random data at the paper's
batch size, and the peak resident memory of the process. Every network runs in a fresh subprocess so that
peaks and compiled graphs do not mix. The table names the BLAS that Theano links and the thread counts.

--peer: the same networks in Larq on TensorFlow (benchmark_peer.py, in its own environment .venv-peer made by
`make peer`), built from a layer table read off the Lasagne network. Per network the two sides alternate, --rounds
times each (Theano, peer, Theano, peer, ...), so that both see the same machine load; each side's figure is the
median of all its timed calls. The last line names the network with the largest ratio Theano/peer.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from threadpoolctl import threadpool_info

from plumbing import cli, compat
from plumbing.compat import T, lasagne
from plumbing.errors import ArchiveError

import batch_norm
import benchmark_peer
import binary_connect
import binary_net
import cifar10
import convnet
import mnist
import svhn

# name -> (script module, --method of that script)
NETWORKS = {"bnn-mnist": ("mnist", "binarynet"), "bc-mnist": ("mnist", "bc-stoch"),
            "bnn-cifar10": ("cifar10", "binarynet"), "bc-cifar10": ("cifar10", "bc-stoch"),
            "bnn-svhn": ("svhn", "binarynet"), "bc-svhn": ("svhn", "bc-stoch")}
RESULT_PREFIX = benchmark_peer.RESULT_PREFIX
HERE = os.path.dirname(os.path.abspath(__file__))
PEER_PYTHON = os.path.join(HERE, ".venv-peer", "bin", "python")


class PeerMissing(ArchiveError):
    """--peer without the peer's virtual environment."""


def build(name, width, input_var):
    """The network and hyperparameters of one experiment script, widths multiplied by `width`."""
    script, method = NETWORKS[name]
    family = cli.family(method)
    if script == "mnist":
        hp = mnist.hyperparameters(method)
        hp = mnist.hyperparameters(method, units=convnet.scaled(hp["num_units"], width))
        return mnist.build_mlp(family, input_var, hp), hp, (1, 28, 28)
    module = {"cifar10": cifar10, "svhn": svhn}[script]
    hp = module.hyperparameters(method)
    full = convnet.CIFAR10_WIDTHS if script == "cifar10" else convnet.SVHN_WIDTHS
    widths = tuple(convnet.scaled(f, width) for f in full)
    return convnet.build_convnet(family, input_var, hp, widths, convnet.scaled(convnet.DENSE_UNITS, width)), hp, \
        (3, 32, 32)


def measure(name, repeats, width):
    """Runs in the child process: compile, one warm-up call, then `repeats` timed calls."""
    np.random.seed(1234)
    input_var, target_var, LR = T.tensor4("inputs"), T.matrix("targets"), T.scalar("LR")
    network, hp, shape = build(name, width, input_var)
    start = time.time()
    train_fn, _, _ = binary_connect.compile_functions(network, input_var, target_var, LR)
    compile_seconds = time.time() - start
    batch = hp["batch_size"]
    X = np.random.uniform(-1, 1, (batch,) + shape).astype(np.float32)
    y = -np.ones((batch, 10), np.float32)
    y[np.arange(batch), np.random.randint(0, 10, batch)] = 1
    train_fn(X, y, hp["LR_start"])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        train_fn(X, y, hp["LR_start"])
        times.append(time.perf_counter() - start)
    pools = [f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads"
             f"{', ' + p['architecture'] if p.get('architecture') else ''})"
             for p in threadpool_info()]
    return dict(network=name, batch_size=batch, times=times, seconds=statistics.median(times), min_seconds=min(times),
                compile_seconds=compile_seconds, peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.,
                blas=compat.BLAS_NAME, pools=pools, omp_threads=os.environ.get("OMP_NUM_THREADS", "unset"))


def layer_table(network, hp, shape):
    """The peer's layer table (benchmark_peer.py) read off a Lasagne network, input to output."""
    layers, draws = [], set()
    for layer in lasagne.layers.get_all_layers(network):
        if isinstance(layer, lasagne.layers.InputLayer):
            continue
        if isinstance(layer, (binary_connect.Conv2DLayer, binary_connect.DenseLayer)):
            assert layer.binary and float(layer.H) == 1.
            draws.add("stochastic" if layer.stochastic else "sign")
        if isinstance(layer, lasagne.layers.DropoutLayer):
            if layer.p > 0:
                layers.append(["dropout", float(layer.p)])
        elif isinstance(layer, binary_connect.Conv2DLayer):
            assert layer.filter_size == (3, 3) and layer.pad == (1, 1) and layer.stride == (1, 1)
            layers.append(["conv", layer.num_filters])
        elif isinstance(layer, binary_connect.DenseLayer):
            layers.append(["dense", layer.num_units])
        elif isinstance(layer, lasagne.layers.MaxPool2DLayer):
            assert layer.pool_size[0] == layer.pool_size[1]
            layers.append(["pool", layer.pool_size[0]])
        elif isinstance(layer, (batch_norm.BatchNormLayer, batch_norm.BCBatchNormLayer)):
            layers.append(["bn", float(layer.epsilon), float(layer.alpha)])
            if getattr(layer, "nonlinearity", None) is lasagne.nonlinearities.rectify:
                layers.append(["relu"])
        elif isinstance(layer, lasagne.layers.NonlinearityLayer):
            assert layer.nonlinearity is binary_net.binary_tanh_unit
            layers.append(["sign"])
        else:
            raise TypeError(f"no peer layer for {type(layer).__name__}")
    assert len(draws) == 1
    return dict(batch_size=hp["batch_size"], input_shape=list(shape), learning_rate=hp["LR_start"],
                weight_draw=draws.pop(), layers=layers)


def parse_result(name, result):
    """A child's result dict from its output, or dict(error=its last line of stderr)."""
    for line in result.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    last = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
    return dict(network=name, error=last)


def run_child(name, repeats, width):
    command = [sys.executable, os.path.abspath(__file__), "--child", name, "--repeats", str(repeats),
               "--width", str(width)]
    return parse_result(name, subprocess.run(command, capture_output=True, text=True, cwd=HERE))


def run_peer(name, repeats, table):
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="peer-") as spec:
        json.dump(table, spec)
        spec.flush()
        command = [PEER_PYTHON, os.path.join(HERE, "benchmark_peer.py"), "--spec", spec.name, "--repeats",
                   str(repeats)]
        # the peer runs in the user's environment, without the thread settings compat made for Theano's pools
        env = {k: v for k, v in os.environ.items() if k not in compat.THREAD_SETTINGS}
        return parse_result(name, subprocess.run(command, capture_output=True, text=True, cwd=HERE, env=env))


def check_peer():
    if not os.path.exists(PEER_PYTHON):
        peer = os.path.relpath(PEER_PYTHON, HERE)
        raise PeerMissing(f"--peer needs Larq/TensorFlow in {peer}: run `make peer` first (requirements-peer.txt)")


def merge(runs):
    """Several children's results for one side of one network -> one row (median over all timed calls)."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    times = [t for r in runs for t in r["times"]]
    row = dict(runs[0], times=times, seconds=statistics.median(times), min_seconds=min(times))
    row.update(compile_seconds=max(r["compile_seconds"] for r in runs), peak_mib=max(r["peak_mib"] for r in runs))
    return row


def ratio_row(name, theano, peer):
    """One line of the --peer table; failed sides print their error."""
    for side, row in (("Theano", theano), ("peer", peer)):
        if "error" in row:
            return f"{name:<12} {side} failed: {row['error']}"
    ratio = theano["seconds"] / peer["seconds"]
    return (f"{name:<12} {theano['batch_size']:>6} {theano['seconds']:>9.3f} {peer['seconds']:>9.3f} {ratio:>7.2f} "
            f"{theano['compile_seconds']:>10.1f} {peer['compile_seconds']:>10.1f} {theano['peak_mib']:>9.0f} "
            f"{peer['peak_mib']:>9.0f}")


def worst_line(pairs):
    """The last line of --peer: the largest ratio Theano/peer over the networks both sides ran."""
    ratios = [(theano["seconds"] / peer["seconds"], name) for name, theano, peer in pairs
              if "error" not in theano and "error" not in peer]
    if not ratios:
        return "worst ratio Theano/peer: none (no network ran on both sides)"
    worst, name = max(ratios)
    return f"worst ratio Theano/peer: {worst:.2f} ({name})"


def load_line():
    return f"machine load (1, 5, 15 min): {cli.load_averages()} on {os.cpu_count()} CPUs"


def main_peer(args):
    check_peer()
    print("Seconds per training minibatch, Theano (this project) and its peer Larq/TensorFlow, side by side: per "
          f"network {args.rounds} rounds of one Theano and one peer process, each the median of {args.repeats} "
          f"calls after a warm-up call; width x{args.width}")
    print(load_line(), flush=True)
    print(f"{'network':<12} {'batch':>6} {'Theano s':>9} {'peer s':>9} {'ratio':>7} {'Theano cmp':>10} "
          f"{'peer cmp':>10} {'Theano MB':>9} {'peer MB':>9}")
    pairs = []
    for name in args.networks:
        network, hp, shape = build(name, args.width, T.tensor4("inputs"))
        table = layer_table(network, hp, shape)
        theano_runs, peer_runs = [], []
        for _ in range(args.rounds):
            theano_runs.append(run_child(name, args.repeats, args.width))
            peer_runs.append(run_peer(name, args.repeats, table))
        pairs.append((name, merge(theano_runs), merge(peer_runs)))
        print(ratio_row(*pairs[-1]), flush=True)
    print(load_line())
    for side, index in (("Theano", 1), ("peer", 2)):
        info = next((pair[index] for pair in pairs if "error" not in pair[index]), None)
        if info:
            print(f"{side}: {info['blas']}; threads: {'; '.join(info['pools'])}; "
                  f"OMP_NUM_THREADS={info['omp_threads']}")
    print(worst_line(pairs))
    return 0


def network_list(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NETWORKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown network(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {','.join(NETWORKS)}")
    return names


def main(argv=None):
    p = cli.Parser(__doc__.splitlines()[0])
    p.add_argument("--networks", type=network_list, default=list(NETWORKS), help="comma list of " + ",".join(NETWORKS))
    p.add_argument("--repeats", type=cli.positive_int, default=3, help="timed calls after the warm-up call")
    p.add_argument("--width", type=cli.positive_float, default=1.0, help="multiply every layer's width")
    p.add_argument("--peer", action="store_true", help="side by side with Larq/TensorFlow (run `make peer` first)")
    p.add_argument("--rounds", type=cli.positive_int, default=2, help="--peer: alternations of the two sides")
    p.add_argument("--child", choices=list(NETWORKS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(measure(args.child, args.repeats, args.width)))
        return 0
    if args.peer:
        return main_peer(args)

    print("Seconds per training minibatch (train_fn: forward + backward + updates), median of "
          f"{args.repeats} calls after a warm-up call; width x{args.width}; {os.cpu_count()} CPUs")
    print(f"{'network':<12} {'batch':>6} {'s/batch':>10} {'min s':>10} {'compile s':>11} {'peak MiB':>10}")
    info = None
    for name in args.networks:
        row = run_child(name, args.repeats, args.width)
        if "error" in row:
            print(f"{name:<12} failed: {row['error']}")
            continue
        info = info or row
        print(f"{name:<12} {row['batch_size']:>6} {row['seconds']:>10.3f} {row['min_seconds']:>10.3f} "
              f"{row['compile_seconds']:>11.1f} {row['peak_mib']:>10.0f}", flush=True)
    if info:
        print("BLAS linked by Theano: " + info["blas"] + "; OMP_NUM_THREADS=" + info["omp_threads"])
        print("Thread pools: " + ("; ".join(info["pools"]) or "none found"))
    return 0


if __name__ == "__main__":
    sys.exit(cli.main_guard(main))
