"""Training speed and memory of the papers' networks on this machine.

    python benchmark_training.py                                   # all six networks, paper batch sizes
    python benchmark_training.py --networks bnn-mnist,bc-cifar10 --repeats 5 --width 0.25

For each network (the MNIST MLPs of mnist.py, the ConvNets of cifar10.py and svhn.py, with the original
scripts' hyperparameters, ORIGINALS.md §2.1-§2.2): seconds per minibatch of train_fn (forward, backward and
both Adam updates), the median over --repeats calls after one warm-up call, on random data at the paper's
batch size, and the peak resident memory of the process. Every network runs in a fresh subprocess so that
peaks and compiled graphs do not mix. The table names the BLAS that Theano links and the thread counts.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import threadpool_info

from plumbing import cli, compat
from plumbing.compat import T

import binary_connect
import cifar10
import convnet
import mnist
import svhn

# name -> (script module, --method of that script)
NETWORKS = {"bnn-mnist": ("mnist", "binarynet"), "bc-mnist": ("mnist", "bc-stoch"),
            "bnn-cifar10": ("cifar10", "binarynet"), "bc-cifar10": ("cifar10", "bc-stoch"),
            "bnn-svhn": ("svhn", "binarynet"), "bc-svhn": ("svhn", "bc-stoch")}
RESULT_PREFIX = "BENCHMARK-RESULT "


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
    pools = ["{} {} ({} threads{})".format(p.get("internal_api"), p.get("version"), p.get("num_threads"),
                                           ", " + p["architecture"] if p.get("architecture") else "")
             for p in threadpool_info()]
    return dict(network=name, batch_size=batch, seconds=statistics.median(times), min_seconds=min(times),
                compile_seconds=compile_seconds, peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.,
                blas=compat.BLAS_NAME, pools=pools, omp_threads=os.environ.get("OMP_NUM_THREADS", "unset"))


def run_child(name, repeats, width):
    command = [sys.executable, os.path.abspath(__file__), "--child", name, "--repeats", str(repeats),
               "--width", str(width)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    for line in result.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    last = (result.stderr.strip().splitlines() or ["exit status {}".format(result.returncode)])[-1]
    return dict(network=name, error=last)


def network_list(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NETWORKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError("unknown network(s) {}; choose from {}".format(
            ", ".join(unknown) or "(none)", ",".join(NETWORKS)))
    return names


def main(argv=None):
    p = cli.Parser(__doc__.splitlines()[0])
    p.add_argument("--networks", type=network_list, default=list(NETWORKS), help="comma list of " + ",".join(NETWORKS))
    p.add_argument("--repeats", type=cli.positive_int, default=3, help="timed calls after the warm-up call")
    p.add_argument("--width", type=cli.positive_float, default=1.0, help="multiply every layer's width")
    p.add_argument("--child", choices=list(NETWORKS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(measure(args.child, args.repeats, args.width)))
        return 0

    print("Seconds per training minibatch (train_fn: forward + backward + updates), median of {} calls after a "
          "warm-up call; width x{}; {} CPUs".format(args.repeats, args.width, os.cpu_count()))
    print("{:<12} {:>6} {:>10} {:>10} {:>11} {:>10}".format("network", "batch", "s/batch", "min s", "compile s",
                                                           "peak MiB"))
    info = None
    for name in args.networks:
        row = run_child(name, args.repeats, args.width)
        if "error" in row:
            print("{:<12} failed: {}".format(name, row["error"]))
            continue
        info = info or row
        print("{:<12} {:>6} {:>10.3f} {:>10.3f} {:>11.1f} {:>10.0f}".format(
            name, row["batch_size"], row["seconds"], row["min_seconds"], row["compile_seconds"], row["peak_mib"]),
            flush=True)
    if info:
        print("BLAS linked by Theano: " + info["blas"] + "; OMP_NUM_THREADS=" + info["omp_threads"])
        print("Thread pools: " + ("; ".join(info["pools"]) or "none found"))
    return 0


if __name__ == "__main__":
    sys.exit(cli.main_guard(main))
