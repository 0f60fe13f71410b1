"""plumbing/parallel_mrg.py: Theano's MRG31k3p uniform generator run stream by stream on all cores must give Theano's
own C loop's samples and final stream states bit for bit, for sizes below and above the threading threshold and for
a size that is not a multiple of the number of streams. The loop draws 16 neighbouring streams side by side (SIMD
lanes); the cases cover whole groups of 16, a last partial group, and streams that draw one sample more than
their group's last stream."""
import numpy as np
import pytest

from plumbing import compat, parallel_mrg  # noqa: F401  (compat first: Theano's flags)
from plumbing.compat import theano
from theano.sandbox import rng_mrg
from theano.sandbox.rng_mrg import MRG_RandomStreams


def draws(size, nstreams, dtype):
    """Three successive draws of `size` uniforms and the final states of the streams."""
    srng = MRG_RandomStreams(1234)
    u = srng.uniform(size=size, nstreams=nstreams, dtype=dtype)
    f = theano.function([], u)  # the stream states' default updates advance them
    samples = [f() for _ in range(3)]
    return samples, [update[0].get_value() for update in srng.state_updates]


@pytest.mark.parametrize("size, nstreams, dtype", [
    ((7, 5), 6, "float32"),                                          # 35 samples, 6 streams: 5 streams draw 6
    ((301, 401), 20000, "float32"),                                  # above PARALLEL_MIN_ELEMENTS, threaded
    ((301, 401), 1, "float64"),                                      # one stream, the float64 loop
    ((301, 401), 1007, "float64"),                                   # 62 groups of 16 and one of 15
    ((1024, 10), None, "float32"),                                   # Theano's own guess: 1706 streams
    ((16 * 40 + 3,), 16 * 4, "float32"),                             # 4 groups, lanes 0-2 draw one more
])
def test_parallel_streams_give_theanos_numbers(size, nstreams, dtype, monkeypatch):
    ours = draws(size, nstreams, dtype)
    for name, method in parallel_mrg.THEANOS.items():
        monkeypatch.setattr(rng_mrg.mrg_uniform, name, method)
    theirs = draws(size, nstreams, dtype)
    for a, b in zip(ours[0] + ours[1], theirs[0] + theirs[1]):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert 0 < ours[0][0].min() and ours[0][0].max() < 1 and not np.array_equal(ours[0][0], ours[0][1])
