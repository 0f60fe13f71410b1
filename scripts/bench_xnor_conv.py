#!/usr/bin/env python
"""Forward binary convolution alone, XnorConv2D against Theano's CorrMM, side by side (docs/speed.md item 9).

Both compiled by Theano, random +1/-1 inputs and filters, 3x3, pad 1, the two calls alternating; prints the
median seconds of --repeats calls each, the ratio, and that the outputs are equal.

    python scripts/bench_xnor_conv.py --repeats 7
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plumbing import cli  # noqa: E402
from plumbing.compat import T, np, theano  # noqa: E402
from theano.tensor.nnet.corr import CorrMM  # noqa: E402

from kernels.xnor_conv import XnorConv2D  # noqa: E402

LAYERS = [(50, 128, 32, 128), (50, 512, 8, 512)]  # batch, channels in, image side, filters


def main(argv=None):
    parser = cli.Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=cli.positive_int, default=7)
    args = parser.parse_args(argv)
    x, w = T.tensor4("x"), T.tensor4("w")
    corr = theano.function([x, w], CorrMM(border_mode=(1, 1))(x, w))
    xnor = theano.function([x, w], XnorConv2D(border_mode=(1, 1))(x, w))
    rng = np.random.RandomState(0)
    print(f"load average: {cli.load_averages()}")
    print("| layer (N x C x H x W -> M) | CorrMM s | XnorConv2D s | ratio | equal |")
    print("|---|---|---|---|---|")
    for n, c, side, m in LAYERS:
        X = np.where(rng.rand(n, c, side, side) < .5, -1, 1).astype(np.float32)
        W = np.where(rng.rand(m, c, 3, 3) < .5, -1, 1).astype(np.float32)
        equal = np.array_equal(corr(X, W), xnor(X, W))  # also the warm-up call of each
        times = {corr: [], xnor: []}
        for _ in range(args.repeats):
            for fn in (corr, xnor):
                start = time.perf_counter()
                fn(X, W)
                times[fn].append(time.perf_counter() - start)
        a, b = statistics.median(times[corr]), statistics.median(times[xnor])
        print(f"| {n}x{c}x{side}x{side} -> {m} | {a:.4f} | {b:.4f} | {a / b:.1f} | {equal} |")
    print(f"load average: {cli.load_averages()}")


if __name__ == "__main__":
    cli.main_guard(main)
