"""The numbers do not move (issue 7): six short fixed-seed runs of the real scripts (tests/data/make_reference.py) must
reproduce the stored errors, losses and parameter arrays bit for bit. A change that is meant to move them regenerates
tests/data/reference_runs.json with that script and says so in its commit."""
import importlib.util
import json
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def load_make_reference():
    spec = importlib.util.spec_from_file_location("make_reference", os.path.join(HERE, "data", "make_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_reference = load_make_reference()
with open(make_reference.REFERENCE) as f:
    REFERENCE = json.load(f)


def test_reference_file_matches_the_runs_it_describes():
    assert sorted(REFERENCE["runs"]) == sorted(make_reference.RUNS)
    assert REFERENCE["environment"]["MKL_CBWR"] == "COMPATIBLE"
    assert REFERENCE["commands"] == {name: " ".join(argv) for name, (argv, _, _) in make_reference.RUNS.items()}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("reference"))
    make_reference.write_data(root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(make_reference.RUNS))
def test_fixed_seed_run_reproduces_the_stored_numbers(name, data_root):
    numbers = make_reference.run(name, data_root)
    expected = REFERENCE["runs"][name]
    moved = {key: (expected[key], numbers[key]) for key in expected if numbers[key] != expected[key]}
    assert not moved, f"{name} moved (stored, now): {moved}; if intended, run tests/data/make_reference.py"
