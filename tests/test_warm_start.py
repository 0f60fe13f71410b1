"""plumbing/warm_start.py: an unpickled fused elementwise op builds its inner graph only when used, and is the same
op; a passed -march check is kept and not run again, a failed one is not kept."""
import json
import pickle

import numpy as np

from plumbing import compat  # noqa: F401  (first: Theano's flags; it installs warm_start)
from plumbing import warm_start
from plumbing.compat import T, theano
from theano.scalar import basic as scalar


def fused_op():
    """The Composite Theano's fusion makes of exp(x) * 2 + sin(x), with its C code generated (as in the cache)."""
    x = T.matrix()
    f = theano.function([x], T.exp(x) * 2 + T.sin(x))
    [op] = [node.op.scalar_op for node in f.maker.fgraph.toposort()
            if isinstance(getattr(node.op, "scalar_op", None), scalar.Composite)]
    op.init_c_code()
    return op


def test_an_unpickled_composite_equals_the_original_without_building_its_graph():
    op = fused_op()
    copy = pickle.loads(pickle.dumps(op))
    assert "fgraph" not in copy.__dict__ and "_impls" not in copy.__dict__
    assert copy == op and hash(copy) == hash(op) and "fgraph" not in copy.__dict__
    again = pickle.loads(pickle.dumps(copy))  # pickled again before its graph was built (a key.pkl rewritten)
    assert again == op and "fgraph" not in again.__dict__


def test_the_graph_and_the_python_code_are_built_on_first_use():
    op = fused_op()
    copy = pickle.loads(pickle.dumps(op))
    assert str(copy.fgraph.outputs) == str(op.fgraph.outputs) and "fgraph" in copy.__dict__
    assert str(copy) == "Composite{((i0 * exp(i1)) + sin(i1))}"  # the constant 2 is input i0
    inputs = [np.float32(2), np.float32(0.5)]
    assert copy._impls[0](inputs) == op.impl(*inputs)  # Theano's Python code for each
    assert np.isclose(copy.impl(*inputs), 2 * np.exp(0.5) + np.sin(0.5))
    assert pickle.loads(pickle.dumps(copy)) == op  # and pickles after it was built


def test_other_missing_attributes_still_raise():
    copy = pickle.loads(pickle.dumps(fused_op()))
    try:
        copy.no_such_attribute
    except AttributeError as error:
        assert "no_such_attribute" in str(error)
    else:
        raise AssertionError("no AttributeError")


def counting_check(monkeypatch):
    calls, theanos = [], warm_start.THEANOS["try_march_flag"]

    def check(flags):
        calls.append(list(flags))
        return theanos(flags)

    monkeypatch.setitem(warm_start.THEANOS, "try_march_flag", check)
    return calls


def test_a_passed_march_check_runs_once_and_is_kept(tmp_path, monkeypatch):
    calls = counting_check(monkeypatch)
    path = str(tmp_path / "checks.json")
    assert warm_start.remembered_march_check(["-O1"], path) == (True, True)  # Theano's real test compile and run
    assert warm_start.remembered_march_check(["-O1"], path) == (True, True)
    assert calls == [["-O1"]]
    with open(path) as file:
        assert list(json.load(file).values()) == [[True, True]]
    warm_start.remembered_march_check(["-O2"], path)  # other flags: a check of their own
    assert calls == [["-O1"], ["-O2"]]


def test_a_failed_march_check_is_not_kept(tmp_path, monkeypatch):
    calls = counting_check(monkeypatch)
    path = str(tmp_path / "checks.json")
    flags = ["-march=no-such-cpu"]
    assert warm_start.remembered_march_check(flags, path)[0] is False
    assert warm_start.remembered_march_check(flags, path)[0] is False
    assert calls == [flags, flags] and not (tmp_path / "checks.json").exists()


def test_a_damaged_checks_file_is_ignored(tmp_path, monkeypatch):
    calls = counting_check(monkeypatch)
    path = tmp_path / "checks.json"
    path.write_text("{not json")
    assert warm_start.remembered_march_check(["-O1"], str(path)) == (True, True) and calls == [["-O1"]]
    assert list(json.loads(path.read_text()).values()) == [[True, True]]


def test_installed_by_compat():
    from theano.gof import cmodule
    assert cmodule.try_march_flag is warm_start.remembered_march_check
    assert scalar.Composite.__setstate__ is warm_start.lazy_setstate
