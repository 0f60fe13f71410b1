"""plumbing/runfiles.py: atomic files, what a checkpoint holds, resuming (state, numpy's rng, log), and the checks that
refuse a checkpoint from other settings. Small shared variables stand in for a network's state."""
import json
import multiprocessing
import os

import numpy as np
import pytest

import batch_norm
import binary_connect
from plumbing import runfiles
from plumbing.compat import T, lasagne, theano
from plumbing.errors import RunError

from conftest import invert_first_npy_header

INFO = dict(dataset="mnist", method="bc-det", train_size=300, hyperparameters={"batch_size": 50, "seed": 1})


def leftovers(folder):
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_atomic_write_replaces_the_whole_file_or_nothing(tmp_path):
    path = str(tmp_path / "results.json")
    runfiles.atomic_write_json(path, {"b": 1, "a": [1, 2]})
    with open(path) as f:
        text = f.read()
    assert text == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True) + "\n"
    with pytest.raises(TypeError):
        runfiles.atomic_write_bytes(path, "not bytes")          # fails while writing the temporary file
    with open(path) as f:
        assert f.read() == text                                # the previous version is intact
    assert leftovers(str(tmp_path)) == []


def test_state_variables_of_a_small_network():
    """Parameters (W, b, beta, gamma and the BN statistics), Adam's m and v per parameter and its two step
    counters, and the binary layer's random-stream state; each once."""
    x, t, lr = T.matrix(), T.matrix(), T.scalar()
    dense = binary_connect.DenseLayer(lasagne.layers.InputLayer((None, 4), x), 3, stochastic=True)
    net = batch_norm.BatchNormLayer(dense)
    loss = binary_connect.squared_hinge_loss(lasagne.layers.get_output(net), t)
    updates = binary_connect.adam_updates(loss, net, lr)
    state = runfiles.state_variables(net, updates)
    params = lasagne.layers.get_all_params(net)
    assert state[:6] == params and len(params) == 6
    assert len(state) == len(set(map(id, state))) == 6 + 4 * 2 + 2 + 1
    assert dense._srng.state_updates[0][0] in state


def test_run_info_describes_settings_and_software():
    info = runfiles.run_info("cifar10", "bc-det", 7, {"batch_size": 50, "num_epochs": 3}, 9.9, 400, width=0.25)
    assert (info["dataset"], info["method"], info["epochs"], info["train_size"], info["paper_test_error"]) == (
        "cifar10", "bc-det", 3, 400, 9.9)
    assert info["hyperparameters"] == {"batch_size": 50, "num_epochs": 3, "seed": 7, "width": 0.25}
    assert set(info["environment"]) == {"python", "numpy", "theano", "blas", "machine"}


def make_state():
    return [theano.shared(np.arange(6, dtype=np.float32).reshape(2, 3)), theano.shared(np.float32(2.))]


SUMMARY = dict(epochs=4, epochs_done=2, best_epoch=2, best_val_error=5.0, val_error=5.0, test_error=6.0,
               test_loss=0.1, LR=0.25, seconds=3.0)


def started(out, info=INFO, state=None, model=None, resume=False):
    """A claimed folder with the run's description recorded (what binary_connect.train does first)."""
    run = runfiles.Run(out, resume, "p.npz")
    restored = run.start(info, make_state() if state is None else state, model)
    run.release()  # the tests open the same folder again from this process
    return run, restored


def test_checkpoint_restores_state_rng_order_and_log(tmp_path):
    out = str(tmp_path / "run")
    state = make_state()
    run, restored = started(out, state=state)
    assert restored is None
    np.random.seed(3)
    np.random.rand(5)
    for epoch in (1, 2):
        run.end_epoch({"epoch": epoch}, dict(SUMMARY, epochs_done=epoch), np.array([2, 0, 1]))
    expected_draws = np.random.rand(4)
    with open(os.path.join(out, runfiles.LOG), "a") as f:
        f.write(json.dumps({"epoch": 3}) + "\n")              # a stray line of an uncommitted epoch
    state[0].set_value(np.zeros((2, 3), np.float32))
    state[1].set_value(np.float32(9.))
    np.random.seed(99)

    _, (summary, order) = started(out, state=state, resume=True)
    assert summary == SUMMARY and order.tolist() == [2, 0, 1]
    np.testing.assert_array_equal(state[0].get_value(), np.arange(6).reshape(2, 3))
    assert state[1].get_value() == 2.
    np.testing.assert_array_equal(np.random.rand(4), expected_draws)   # numpy's rng continues where it stopped
    with open(os.path.join(out, runfiles.LOG)) as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]      # rewritten from the checkpoint
    with open(os.path.join(out, runfiles.RESULTS)) as f:
        results = json.load(f)
    assert results["finished"] is False and results["epochs_done"] == 2 and results["dataset"] == "mnist"
    assert leftovers(out) == []


@pytest.mark.parametrize("change, message", [
    (lambda info, state: (dict(info, train_size=400), state), r"other settings \(train_size differ\)"),
    (lambda info, state: (dict(info, hyperparameters={"batch_size": 20, "seed": 1}), state),
     r"other settings \(hyperparameters differ\)"),
    (lambda info, state: (dict(info, data=[{"name": "x", "md5": "0"}]), state), "other data files"),
    (lambda info, state: (info, state[:1]), "from a different network"),
    (lambda info, state: (info, [theano.shared(np.zeros((3, 3), np.float32)), state[1]]), "different sizes"),
])
def test_a_checkpoint_from_other_settings_is_refused(tmp_path, change, message):
    out = str(tmp_path)
    run, _ = started(out)
    run.end_epoch({"epoch": 1}, SUMMARY, np.arange(3))
    info, state = change(INFO, make_state())
    with pytest.raises(RunError, match=message):
        started(out, info, state, resume=True)


def as_version_1(out):
    """Rewrite a folder's checkpoint as version 1 wrote it: no format number, no log rows, no data identity."""
    path = os.path.join(out, runfiles.CHECKPOINT)
    with np.load(path) as ckpt:
        arrays = {name: ckpt[name] for name in ckpt.files}
    meta = json.loads(str(arrays["meta"]))
    del meta["format"], meta["rows"], meta["info"]["data"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def test_a_version_1_checkpoint_resumes_without_a_data_check(tmp_path, capsys):
    """Version 1 recorded no data identity: its runs resume (with a note) rather than being refused for good;
    its log rows come from log.jsonl, and its other settings are still checked."""
    out = str(tmp_path)
    info = dict(INFO, data=[{"name": "train-images-idx3-ubyte.gz", "md5": "f78720b4224f21cce2f2ccf2d7a94c9a"}])
    run, _ = started(out, info)
    run.end_epoch({"epoch": 1}, dict(SUMMARY, epochs_done=1), np.arange(3))
    as_version_1(out)
    _, (summary, _) = started(out, info, resume=True)
    assert summary["epochs_done"] == 1
    assert "does not record which data files" in capsys.readouterr().out
    with pytest.raises(RunError, match=r"other settings \(train_size differ\)"):
        started(out, dict(info, train_size=400), resume=True)


def test_a_checkpoint_with_a_damaged_array_header_is_one_clear_error(tmp_path):
    out = str(tmp_path)
    big = [theano.shared(np.zeros((40, 50), np.float32)), theano.shared(np.float32(2.))]
    run, _ = started(out, state=big)
    run.end_epoch({"epoch": 1}, SUMMARY, np.arange(3000))    # 'order' first in the file, larger than 4 kB
    path = os.path.join(out, runfiles.CHECKPOINT)
    with open(path, "rb") as f:
        damaged = invert_first_npy_header(f.read())
    with open(path, "wb") as f:
        f.write(damaged)
    with pytest.raises(RunError, match=r"cannot read the checkpoint in .*\(TokenError: .*it is damaged"):
        started(out, state=big, resume=True)


def test_a_damaged_checkpoint_is_one_clear_error(tmp_path):
    out = str(tmp_path)
    run, _ = started(out)
    run.end_epoch({"epoch": 1}, SUMMARY, np.arange(3))
    path = os.path.join(out, runfiles.CHECKPOINT)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(RunError, match="cannot read the checkpoint in .*it is damaged"):
        started(out, resume=True)


def test_parameters_are_staged_then_promoted_in_the_original_layout(tmp_path):
    net = lasagne.layers.DenseLayer(lasagne.layers.InputLayer((None, 4)), 3)
    run, _ = started(str(tmp_path), model=net)
    run.stage_parameters(1)
    assert not (tmp_path / "p.npz").exists()                  # not before the epoch is committed
    run.end_epoch({"epoch": 1}, dict(SUMMARY, epochs_done=1, best_epoch=1), np.arange(3))
    with np.load(str(tmp_path / "p.npz")) as saved:
        assert saved.files == ["arr_0", "arr_1"]
        np.testing.assert_array_equal(saved["arr_0"], net.W.get_value())
    assert [name for name in os.listdir(str(tmp_path)) if name.startswith(".")] == []


def test_without_a_folder_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = runfiles.Run(None)
    assert run.start(INFO, make_state(), None) is None
    run.stage_parameters(1)
    run.end_epoch({"epoch": 1}, SUMMARY, np.arange(3))
    assert os.listdir(tmp_path) == []
    assert run.summary(dict(SUMMARY, epochs_done=4))["finished"] is True


def test_an_output_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunError, match="cannot create the output folder .*; choose another --out"):
        runfiles.Run(str(blocker / "run"))


def test_a_second_claim_on_a_folder_is_refused_while_the_first_holds_it(tmp_path):
    first = runfiles.Run(str(tmp_path / "run"))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def claim():
        try:
            runfiles.Run(str(tmp_path / "run"))
            queue.put("claimed")
        except RunError as e:
            queue.put(str(e))

    child = context.Process(target=claim)
    child.start()
    child.join()
    assert f"is in use by process {os.getpid()}" in queue.get()
    first.release()


def test_out_folder_rules(tmp_path):
    runfiles.Run(None, False)
    runfiles.Run(str(tmp_path), False).release()   # an empty or new folder
    runfiles.Run(str(tmp_path), True).release()    # resuming a folder without a checkpoint starts the run
    with pytest.raises(RunError, match="--resume needs --out"):
        runfiles.Run(None, True)
    open(os.path.join(str(tmp_path), "checkpoint.npz"), "wb").close()
    with pytest.raises(RunError, match="already holds a run; add --resume to continue it, or choose another"):
        runfiles.Run(str(tmp_path), False)
    runfiles.Run(str(tmp_path), True).release()
