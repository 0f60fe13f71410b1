"""plumbing/graph_cache.py: a second compile of the same graph links the stored optimized graph instead of running
Theano's optimizer, with the same nodes in the same order and the same bits; the key changes with everything the
optimizer reads; a stored file that does not load is replaced, a graph that does not pickle is not stored."""
import logging
import os
import pickle
import time

import numpy as np
import pytest

from plumbing import compat  # noqa: F401  (first: Theano's flags; it installs graph_cache)
from plumbing import graph_cache
import lasagne  # noqa: E402
from plumbing.compat import T, theano
from theano.compile import profiling
from theano.sandbox.rng_mrg import MRG_RandomStreams


@pytest.fixture(name="stored")
def stored_fixture(tmp_path, monkeypatch):
    """An empty graph store of this test's own; returns the list of stored files."""
    monkeypatch.setattr(graph_cache, "directory", lambda: str(tmp_path / "graphs"))
    monkeypatch.setenv("BINARYNET_GRAPH_CACHE", "1")
    return lambda: sorted(os.listdir(tmp_path / "graphs")) if (tmp_path / "graphs").exists() else []


def training_step():
    """A small BinaryConnect-like step, built anew each call with the same starting values: a stochastic binarization
    of W (an MRG draw, whose state is updated), a squared hinge loss and Adam (in-place updates)."""
    W = theano.shared(np.linspace(-1, 1, 12).reshape(3, 4).astype("float32"), name="W")
    x, t = T.matrix("x"), T.matrix("t")
    draw = MRG_RandomStreams(1234).uniform(W.shape)
    Wb = T.switch(T.lt(draw, T.clip((W + 1) / 2, 0, 1)), 1.0, -1.0).astype("float32")
    loss = T.mean(T.sqr(T.maximum(0.0, 1.0 - t * T.dot(x, Wb))))
    updates = lasagne.updates.adam([theano.grad(loss, Wb)], [W], learning_rate=0.01)
    fn = theano.function([x, t], loss, updates=updates)
    return fn, [W] + [v for v in updates if v is not W]


def opt_time():
    return profiling.total_graph_opt_time


def run(fn, shared):
    x = np.arange(6, dtype="float32").reshape(2, 3) / 6 - 0.4
    t = np.array([[1, -1, -1, 1], [-1, 1, 1, -1]], "float32")
    losses = [fn(x, t) for _ in range(3)]
    return np.array(losses).tobytes(), [v.get_value().tobytes() for v in shared]


def test_a_second_compile_links_the_stored_graph_with_the_same_bits(stored):
    first, first_shared = training_step()
    assert len(stored()) == 1
    before = opt_time()
    second, second_shared = training_step()
    assert opt_time() == before  # Theano's optimizer did not run
    assert any(isinstance(f, graph_cache.StoredOrder) for f in second.maker.fgraph._features)
    assert [str(n.op) for n in second.maker.fgraph.toposort()] == [str(n.op) for n in first.maker.fgraph.toposort()]
    assert theano.printing.debugprint(second, file="str") == theano.printing.debugprint(first, file="str")
    assert run(second, second_shared) == run(first, first_shared)
    assert len(stored()) == 1


def keys(**changes):
    """The key of f(x) = exp(x * c) + W for a shared W, with one part changed."""
    x = changes.get("x", T.matrix("x"))
    W = theano.shared(np.zeros((2, 2), "float32"), name="W")
    out = changes.get("op", T.exp)(x * np.float32(changes.get("c", 2))) + W
    inputs = [theano.In(x), theano.In(W, value=W.container, mutable=False)]
    return graph_cache.graph_key(inputs, [theano.Out(out)], theano.compile.mode.get_mode(None))


def test_the_key_is_the_same_for_the_same_graph_and_changes_with_what_the_optimizer_reads(monkeypatch):
    key = keys()
    assert key == keys() and len(key) == 64
    assert keys(c=3) != key  # a constant's value
    assert keys(op=T.log) != key  # an op
    assert keys(x=T.tensor3("x")) != key  # an input's type
    assert keys(x=T.matrix("y")) != key  # a name
    with theano.configparser.change_flags(on_opt_error="ignore"):
        assert keys() != key  # Theano's configuration
    monkeypatch.setenv("BINARYNET_SIMD_LOOPS", "0")
    assert keys() != key  # a switch
    monkeypatch.delenv("BINARYNET_SIMD_LOOPS")
    assert keys() == key
    monkeypatch.setenv("BINARYNET_GRAPH_CACHE", "1")
    assert keys() == key  # but not this cache's own switch (set or not, the same graph)
    version = np.__version__
    monkeypatch.setattr(np, "__version__", "1.23.6")
    assert keys() != key  # NumPy's version (constant folding runs NumPy)
    monkeypatch.setattr(np, "__version__", version)
    assert keys() == key
    monkeypatch.setattr(theano.tensor.elemwise.Elemwise, "c_code_cache_version", lambda self: (1,))
    assert keys() != key  # a method of an op class swapped (as the tests of Theano's own C code do)


def test_the_key_of_a_graph_does_not_change_when_another_compile_used_its_ops(stored):
    """The validation function shares ops with the training function compiled before it; the optimizer hashes them
    (an Elemwise's frozendict caches its hash then), which must not give the second function another key."""
    exp, times = T.Elemwise(theano.scalar.exp), T.Elemwise(theano.scalar.mul)  # ops no other test has hashed
    x = T.matrix("x")
    out = times(exp(x), x)
    mode = theano.compile.mode.get_mode(None)
    key = graph_cache.graph_key([theano.In(x)], [theano.Out(out)], mode)
    theano.function([x], exp(x) + 1)
    assert len(stored()) == 1
    assert graph_cache.graph_key([theano.In(x)], [theano.Out(out)], mode) == key


def test_a_stored_file_that_does_not_load_is_deleted_and_the_graph_optimized_again(stored, caplog):
    training_step()
    [name] = stored()
    path = os.path.join(graph_cache.directory(), name)
    with open(path, "wb") as out:
        out.write(b"\x80\x04 cut short")
    before = opt_time()
    with caplog.at_level(logging.WARNING, logger=graph_cache.__name__):
        fn, shared = training_step()
    assert opt_time() > before
    assert "does not load" in caplog.text and name in caplog.text
    with open(path, "rb") as stored_file:
        assert pickle.load(stored_file)["format"] == graph_cache.FORMAT  # written again, whole
    assert np.isfinite(np.frombuffer(run(fn, shared)[0], "float32")).all()


def test_a_graph_that_does_not_pickle_is_not_stored(stored):
    @theano.compile.ops.as_op(itypes=[T.dvector], otypes=[T.dvector])
    def twice(v):  # a local function: its op does not pickle
        return 2 * v

    x = T.dvector("x")
    fn = theano.function([x], twice(x) + 1)
    assert fn(np.array([1.0, 2.0])).tolist() == [3.0, 5.0]
    assert stored() == []


def test_a_folder_that_cannot_be_written_leaves_the_function_working(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(graph_cache, "directory", lambda: str(blocker / "graphs"))  # makedirs fails
    monkeypatch.setenv("BINARYNET_GRAPH_CACHE", "1")
    with caplog.at_level(logging.WARNING, logger=graph_cache.__name__):
        fn, shared = training_step()
    assert "not stored" in caplog.text
    assert np.isfinite(np.frombuffer(run(fn, shared)[0], "float32")).all()
    full = tmp_path / "full"  # a write that fails halfway (a full disk) leaves no temporary file behind
    monkeypatch.setattr(graph_cache, "directory", lambda: str(full))

    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(graph_cache.os, "replace", no_space)
    fn, shared = training_step()
    assert list(full.iterdir()) == []
    assert np.isfinite(np.frombuffer(run(fn, shared)[0], "float32")).all()


def test_graphs_unused_for_theanos_age_limit_are_deleted_and_a_hit_counts_as_a_use(stored):
    training_step()
    [name] = stored()
    path = os.path.join(graph_cache.directory(), name)
    age = theano.config.cmodule.age_thresh_use
    old = os.path.join(graph_cache.directory(), "0" * 64 + ".pkl")
    with open(old, "wb") as out:
        out.write(b"a graph of a key no longer made")
    os.utime(old, (0, time.time() - age - 60))
    os.utime(path, (0, time.time() - age + 3600))  # within the limit, by an hour
    training_step()  # a hit: marks the graph as used now, stores nothing
    assert stored() == sorted(["0" * 64 + ".pkl", name])
    assert os.path.getmtime(path) > time.time() - 60
    x = T.vector("x")
    theano.function([x], x * 3)  # a store: deletes what was not used within the limit
    assert "0" * 64 + ".pkl" not in stored() and name in stored() and len(stored()) == 2


def test_a_mode_with_an_optimizer_object_of_its_own_is_left_to_theano(stored):
    """Only modes that query Theano's registered optimizations are keyed: an optimizer object's settings are not in
    its text, so two of them would share a key."""
    x = T.vector("x")
    mode = theano.compile.Mode(linker="py", optimizer=theano.gof.opt.MergeOptimizer())
    assert graph_cache.graph_key([theano.In(x)], [theano.Out(x * 2)], mode) is None
    assert theano.function([x], x * 2, mode=mode)(np.array([1.0, 2.0], x.dtype)).tolist() == [2.0, 4.0]
    assert stored() == []
    theano.function([x], x * 2, mode=theano.compile.Mode(linker="py", optimizer="fast_run"))
    assert len(stored()) == 1  # a named optimizer is a query: stored


def test_the_switch_and_a_profiled_compile_leave_it_to_theano(stored, monkeypatch):
    monkeypatch.setenv("BINARYNET_GRAPH_CACHE", "0")
    training_step()
    assert stored() == []
    monkeypatch.setenv("BINARYNET_GRAPH_CACHE", "1")
    x = T.vector("x")
    theano.function([x], x * 2, profile=True)
    assert stored() == []
    theano.function([x], x * 2)
    assert len(stored()) == 1


def test_a_graph_stored_before_a_method_of_one_of_its_ops_was_swapped_is_optimized_again(stored, monkeypatch):
    first, _ = training_step()
    assert "Dot22" in [type(node.op).__name__ for node in first.maker.fgraph.toposort()]  # not in the graph as built
    monkeypatch.setattr(theano.tensor.blas.Dot22, "c_code_cache_version", lambda self: (99,))
    before = opt_time()
    training_step()
    assert opt_time() > before


def test_the_nodes_run_in_the_stored_order():
    """exp(x) + log(x): both orders of exp and log are valid; the rebuilt graph runs the one stored."""
    x = T.vector("x")
    fgraph = theano.gof.fg.FunctionGraph([x], [T.exp(x) + T.log(x)])
    flat = graph_cache.flatten(fgraph)
    first_two = sorted(str(node[0]) for node in flat["nodes"][:2])
    assert first_two == ["Elemwise{exp,no_inplace}", "Elemwise{log,no_inplace}"]
    swap = {("node", 0, 0): ("node", 1, 0), ("node", 1, 0): ("node", 0, 0)}
    op, refs, outputs, tag = flat["nodes"][2]
    flat["nodes"] = [flat["nodes"][1], flat["nodes"][0], (op, [swap.get(ref, ref) for ref in refs], outputs, tag)]
    for stored_flat in (graph_cache.flatten(fgraph), flat):
        rebuilt = graph_cache.rebuild(stored_flat, [theano.In(x)])
        assert [str(node.op) for node in rebuilt.toposort()] == [str(node[0]) for node in stored_flat["nodes"]]
