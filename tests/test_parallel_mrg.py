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


def theanos_start_states(seed, n_streams, monkeypatch):
    """Theano's own get_substream_rstates (its compiled DotModulo function, one call per stream)."""
    with monkeypatch.context() as patch:
        for name in ("multMatVect", "get_substream_rstates"):
            owner = rng_mrg if name == "multMatVect" else rng_mrg.MRG_RandomStreams
            patch.setattr(owner, name, parallel_mrg.THEANOS_STARTS[name])
        srng = MRG_RandomStreams(seed)
        states = srng.get_substream_rstates(n_streams, "float32")
        return states, srng.rstate.copy()


@pytest.mark.parametrize("n_streams", [1, 2, 63, 64, 65, 129, 1706, 15360])
def test_start_states_are_theanos(n_streams, monkeypatch):
    """Stream i starts 2^72 steps after stream i - 1: Theano's integers, for block edges of START_BLOCK = 64 and
    Theano's largest stream count; also the generator's next state (inc_rstate, a jump of 2^134 steps)."""
    for seed in (1234, 987654):
        srng = MRG_RandomStreams(seed)
        ours = srng.get_substream_rstates(n_streams, "float32")
        theirs, theirs_next = theanos_start_states(seed, n_streams, monkeypatch)
        assert ours.dtype == theirs.dtype == np.int32 and ours.shape == (n_streams, 6)
        assert np.array_equal(ours, theirs) and np.array_equal(srng.rstate, theirs_next)
    assert n_streams < 3 or len({tuple(row) for row in ours}) == n_streams  # distinct streams


def test_one_jump_by_hand():
    """A state (1, 0, 0 | 0, 0, 1) jumps to the first column of A1p72 and the last column of A2p72."""
    jumped = parallel_mrg.mult_mat_vect(np.asarray([1, 0, 0, 0, 0, 1], np.int32), rng_mrg.A1p72, rng_mrg.M1,
                                        rng_mrg.A2p72, rng_mrg.M2)
    assert jumped.dtype == np.int32
    assert jumped.tolist() == [int(v) for v in rng_mrg.A1p72[:, 0]] + [int(v) for v in rng_mrg.A2p72[:, 2]]
