"""Run outputs: results.json, log.jsonl, the best parameters (.npz) and the checkpoint that --resume reads.

Every file is written atomically (a temporary file in the same folder, then os.replace), so a run killed at
any moment leaves either the previous or the new version, never a torn one.
"""
import io
import json
import os
import platform
import sys
import tempfile
import time
import zipfile
from collections import OrderedDict

import numpy as np

from plumbing import compat
from plumbing.compat import lasagne, theano
from plumbing.errors import RunError

CHECKPOINT = "checkpoint.npz"
LOG = "log.jsonl"
RESULTS = "results.json"
RESUME_MUST_MATCH = ("dataset", "method", "train_size", "hyperparameters")


def clock():
    return time.time()


def atomic_write_bytes(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path, obj):
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_savez(path, *arrays, **named):
    buffer = io.BytesIO()
    np.savez(buffer, *arrays, **named)
    atomic_write_bytes(path, buffer.getvalue())


def state_variables(model, updates):
    """Every shared variable whose value a resumed run needs: parameters (incl. batch-norm statistics),
    optimizer state (Adam's m, v and step counters) and the layers' random-stream states."""
    seen, out = set(), []
    candidates = list(lasagne.layers.get_all_params(model)) + list(updates.keys())
    for layer in lasagne.layers.get_all_layers(model):
        srng = getattr(layer, "_srng", None)
        if srng is not None:
            candidates += [update[0] for update in srng.state_updates]
    for var in candidates:
        if id(var) not in seen:
            seen.add(id(var))
            out.append(var)
    return out


def run_info(dataset, method, seed, hp, paper_test_error, train_size, **extra):
    """What results.json says about a run besides its numbers: settings, command and software."""
    hyper = OrderedDict(hp)
    hyper["seed"] = seed
    hyper.update(extra)
    return dict(dataset=dataset, method=method, epochs=hp["num_epochs"], train_size=train_size,
                paper_test_error=paper_test_error, hyperparameters=hyper, command=" ".join(sys.argv),
                environment=dict(python=platform.python_version(), numpy=np.__version__,
                                 theano=theano.__version__, blas=compat.BLAS_NAME, machine=platform.machine()))


def show_progress():
    return sys.stderr.isatty()


def progress_bar(label, width=30):
    """A callback (done, total) drawing a one-line bar on stderr."""
    def draw(done, total):
        filled = width * done // total
        sys.stderr.write("\r  {} [{}{}] {}/{}".format(label, "#" * filled, "." * (width - filled), done, total))
        if done == total:
            sys.stderr.write("\r" + " " * (width + 30) + "\r")
        sys.stderr.flush()
    return draw


class Run(object):
    """The files of one run in `out_dir` (None: keep nothing, as the original scripts)."""

    def __init__(self, out_dir, run_info, state_vars, model, params_file):
        self.out_dir, self.info = out_dir, dict(run_info or {})
        self.state_vars, self.model, self.params_file = list(state_vars), model, params_file
        if out_dir:
            try:
                os.makedirs(out_dir, exist_ok=True)
            except OSError as e:
                raise RunError("cannot create the output folder {}: {}; choose another --out".format(
                    out_dir, e.strerror))

    def path(self, name):
        return os.path.join(self.out_dir, name)

    def has_checkpoint(self):
        return bool(self.out_dir) and os.path.exists(self.path(CHECKPOINT))

    def save_parameters(self):
        """All parameter values in get_all_param_values order as arr_0, arr_1, ... (ORIGINALS.md §2.5)."""
        if self.out_dir:
            atomic_savez(self.path(self.params_file), *lasagne.layers.get_all_param_values(self.model))

    def end_epoch(self, row, summary, order):
        if not self.out_dir:
            return
        with open(self.path(LOG), "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        rng = np.random.get_state()
        arrays = {"state_%d" % i: v.get_value() for i, v in enumerate(self.state_vars)}
        atomic_savez(self.path(CHECKPOINT), order=order, rng_keys=rng[1],
                     meta=np.array(json.dumps(dict(summary=summary, rng=[rng[0], rng[2], rng[3], rng[4]],
                                                   n_state=len(self.state_vars), info=self.info))), **arrays)
        atomic_write_json(self.path(RESULTS), self.summary(summary))

    def restore(self):
        """Load the checkpoint into the state variables and numpy's rng; returns (summary, row order)."""
        try:
            with np.load(self.path(CHECKPOINT)) as ckpt:
                meta = json.loads(str(ckpt["meta"]))
                changed = sorted(key for key in RESUME_MUST_MATCH if meta["info"].get(key) != self.info.get(key))
                if changed:
                    raise RunError("the run in {} was started with other settings ({} differ); resume it with its "
                                   "original flags, or choose another --out".format(self.out_dir, ", ".join(changed)))
                if meta["n_state"] != len(self.state_vars):
                    raise RunError("the checkpoint in {} is from a different network; start a new run with another "
                                   "--out, or drop --resume".format(self.out_dir))
                for i, var in enumerate(self.state_vars):
                    value = ckpt["state_%d" % i]
                    if value.shape != var.get_value(borrow=True).shape:
                        raise RunError("the checkpoint in {} does not match this network (different sizes); use "
                                       "the flags of the interrupted run, or another --out".format(self.out_dir))
                    var.set_value(value)
                name, pos, has_gauss, cached = meta["rng"]
                np.random.set_state((name, ckpt["rng_keys"], pos, has_gauss, cached))
                order = ckpt["order"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise RunError("cannot read the checkpoint in {} ({}); delete it to start over".format(self.out_dir, e))
        self._truncate_log(meta["summary"]["epochs_done"])
        return meta["summary"], order

    def _truncate_log(self, epochs_done):
        """Drop log lines of an epoch that finished after the last checkpoint (it will run again)."""
        if os.path.exists(self.path(LOG)):
            with open(self.path(LOG)) as f:
                lines = [line for line in f.read().splitlines() if line.strip()][:epochs_done]
            atomic_write_bytes(self.path(LOG), "".join(line + "\n" for line in lines).encode())

    def summary(self, summary):
        out = dict(self.info)
        out.update(summary)
        out["finished"] = summary["epochs_done"] == summary["epochs"]
        return out
