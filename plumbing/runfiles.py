"""A run's folder (the scripts' --out): results.json, log.jsonl, the best parameters (.npz) and the checkpoint
that --resume reads. The guarantees and how they are tested: docs/reliability.md.

One commit point per epoch. The checkpoint holds everything: parameters, optimizer and random-stream states,
numpy's rng, the row order, the summary and every epoch's log row. The epoch is committed when the checkpoint
file is renamed into place (after fsync of the file, then of the folder). Everything else is derived from it:
results.json and log.jsonl are rewritten from the checkpoint after each commit, and new best parameters are
written first under a staging name and promoted only after the commit. Opening a folder with --resume first
repairs it to the last committed epoch (promote or drop the staged parameters, rewrite results and log), so a
kill at any instant ends, after --resume, with the files of an uninterrupted run.

Ownership: the process holds a lock on the folder (a POSIX lock on `lock`, released by the kernel when the
process dies, so a killed run never leaves a stale lock). A folder holding files this run would overwrite but
no checkpoint of its own is refused; --resume with other settings or other data files is refused.

Fault injection for the tests: BINARYNET_FAULT=POINT:N sends SIGKILL to the process the N-th time it reaches
POINT (POINT:N:TERM sends SIGTERM; see `fault_point`); BINARYNET_FAULT_TRACE=FILE appends every point reached.
"""
import errno
import fcntl
import io
import json
import math
import os
import platform
import re
import signal
import socket
import sys
import tempfile
import time
from collections import OrderedDict

import numpy as np

from plumbing import compat
from plumbing.compat import lasagne, theano
from plumbing.errors import DAMAGED_NUMPY_FILE, RunError

CHECKPOINT = "checkpoint.npz"
LOG = "log.jsonl"
RESULTS = "results.json"
LOCK = "lock"
FORMAT_VERSION = 2
RESUME_MUST_MATCH = ("dataset", "method", "train_size", "hyperparameters", "data")
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")
_fault_counts = {}


def clock():
    return time.time()


def fault_point(name):
    """A place where a kill is injected by the fault tests (BINARYNET_FAULT=name:N) or traced."""
    trace = os.environ.get("BINARYNET_FAULT_TRACE")
    if trace:
        with open(trace, "a") as f:
            f.write(name + "\n")
    spec = os.environ.get("BINARYNET_FAULT")  # POINT:N (SIGKILL) or POINT:N:TERM (SIGTERM)
    if spec:
        parts = spec.split(":")
        sig = signal.SIGKILL if parts[-1].isdigit() else getattr(signal, "SIG" + parts.pop())
        count, point = int(parts[-1]), ":".join(parts[:-1])
        if point == name:
            _fault_counts[name] = _fault_counts.get(name, 0) + 1
            if _fault_counts[name] == count:
                os.kill(os.getpid(), sig)


def _fsync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_error(path, error):
    """One line for a failed write: what, why, and that the finished epochs are safe."""
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space", errno.EFBIG: "free some space",
            errno.EROFS: "use a writable --out", errno.EACCES: "fix the folder's permissions or use another --out",
            errno.EPERM: "fix the folder's permissions or use another --out"}.get(error.errno, "fix the cause")
    return RunError(f"cannot write {path}: {error.strerror or error}; {hint} and rerun with --resume (finished epochs "
                    "are kept)")


def atomic_write_bytes(path, data):
    """Write `data` to a temporary file in the same folder, fsync it, rename it over `path`, fsync the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        fault_point(name + ":written")
        os.replace(tmp, path)
        _fsync_folder(folder)
    except OSError as e:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        raise _write_error(path, e)
    except BaseException:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        raise
    fault_point(name + ":renamed")


def _finite(value):
    """JSON-safe copy: nan and inf become None (strict JSON has no NaN), numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _json(obj, indent=None):
    return json.dumps(_finite(obj), indent=indent, sort_keys=True, allow_nan=False)


def atomic_write_json(path, obj):
    atomic_write_bytes(path, (_json(obj, indent=2) + "\n").encode())


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


def run_info(dataset, method, seed, hp, paper_test_error, train_size, data_files=None, **extra):
    """What results.json says about a run besides its numbers: settings, data files read, command, software."""
    hyper = OrderedDict(hp)
    hyper["seed"] = seed
    hyper.update(extra)
    return dict(dataset=dataset, method=method, epochs=hp["num_epochs"], train_size=train_size,
                paper_test_error=paper_test_error, hyperparameters=hyper, data=data_files,
                command=" ".join(sys.argv),
                environment=dict(python=platform.python_version(), numpy=np.__version__,
                                 theano=theano.__version__, blas=compat.BLAS_NAME, machine=platform.machine()))


def show_progress():
    return sys.stderr.isatty()


def progress_bar(label, width=30):
    """A callback (done, total) drawing a one-line bar on stderr."""
    def draw(done, total):
        filled = width * done // total
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r  {label} [{bar}] {done}/{total}")
        if done == total:
            sys.stderr.write("\r" + " " * (width + 30) + "\r")
        sys.stderr.flush()
    return draw


class Run(object):
    """The files of one run in `out_dir` (None: keep nothing, as the original scripts).

    Constructing it claims the folder (create, check it is writable and ours, lock it, clean temporaries), so a
    script does that before its long work; `start` then restores the last committed epoch when resuming.
    """

    def __init__(self, out_dir, resume=False, params_file="parameters.npz"):
        self.out_dir, self.resume, self.params_file = out_dir, resume, params_file
        self.info, self.state_vars, self.model, self.rows = {}, [], None, []
        self._lock_file = None
        if resume and not out_dir:
            raise RunError("--resume needs --out pointing at the interrupted run's folder")
        if out_dir:
            self._claim()

    def path(self, name):
        return os.path.join(self.out_dir, name)

    def _staged(self, epoch):
        return self.path(f".{self.params_file}.epoch{epoch}")

    # ------------------------------------------------------------------------------------------ claiming
    def _claim(self):
        try:
            os.makedirs(self.out_dir, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create the output folder {self.out_dir}: {e.strerror}; choose another --out")
        if not os.path.isdir(self.out_dir):
            raise RunError(f"--out {self.out_dir} is not a folder; choose another --out")
        self._lock()
        self._remove_temporaries()
        has_checkpoint = os.path.exists(self.path(CHECKPOINT))
        if has_checkpoint and not self.resume:
            self.release()
            raise RunError(f"{self.out_dir} already holds a run; add --resume to continue it, or choose another --out")
        ours = [name for name in (RESULTS, LOG, self.params_file) if os.path.exists(self.path(name))]
        if ours and not has_checkpoint:
            self.release()
            raise RunError(f"{self.out_dir} holds {', '.join(ours)} but no checkpoint of a run to continue; nothing is "
                           "overwritten: choose an empty or new --out")

    def _lock(self):
        """Hold a POSIX lock on out/lock for the life of the process; refuse when another process holds it."""
        try:
            self._lock_file = open(self.path(LOCK), "a+")
        except OSError as e:
            raise RunError(f"cannot write to {self.out_dir}: {e.strerror}; use a writable --out")
        try:
            fcntl.lockf(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            self._lock_file.close()
            self._lock_file = None
            raise RunError(f"{self.out_dir} is in use by {holder}; wait for that run to end, or choose another --out")
        try:
            self._lock_file.seek(0)
            self._lock_file.truncate()
            since = time.strftime("%Y-%m-%d %H:%M:%S")
            self._lock_file.write(f"process {os.getpid()} on {socket.gethostname()} since {since}\n")
            self._lock_file.flush()
        except OSError as e:
            self.release()
            raise _write_error(self.path(LOCK), e)

    def release(self):
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file releases the lock
            self._lock_file = None

    def _remove_temporaries(self):
        """Temporary files of writes a kill interrupted (they may be hundreds of MB)."""
        for name in os.listdir(self.out_dir):
            if _TEMPORARY.match(name):
                os.remove(self.path(name))

    # ------------------------------------------------------------------------------------------ resuming
    def start(self, info, state_vars, model):
        """Record what the run is; on --resume with a checkpoint, repair the folder to the last committed epoch
        and load it. Returns (summary, row order) of that epoch, or None for a new run."""
        self.info, self.state_vars, self.model = dict(info or {}), list(state_vars), model
        if not self.out_dir:
            return None
        if not os.path.exists(self.path(CHECKPOINT)):
            for name in os.listdir(self.out_dir):
                if name.startswith("." + self.params_file + ".epoch"):
                    os.remove(self.path(name))
            return None
        meta, order = self._load_checkpoint()
        self.rows = meta["rows"]
        summary = meta["summary"]
        self._settle_parameters(summary["best_epoch"])
        self._write_derived(summary)
        return summary, order

    def _load_checkpoint(self):
        try:
            with np.load(self.path(CHECKPOINT)) as ckpt:
                meta = json.loads(str(ckpt["meta"]))
                if "format" not in meta:  # version 1 kept the log rows in log.jsonl only
                    meta["rows"] = self._read_log_rows()[:meta["summary"]["epochs_done"]]
                    meta["data_unrecorded"] = "data" not in meta["info"]
                elif meta["format"] != FORMAT_VERSION:
                    raise RunError(f"the checkpoint in {self.out_dir} was written by a newer version of this archive; "
                                   "resume it with that version, or start over in another --out")
                self._check_same_run(meta)
                for i, var in enumerate(self.state_vars):
                    value = ckpt[f"state_{i}"]
                    if value.shape != var.get_value(borrow=True).shape:
                        raise RunError(f"the checkpoint in {self.out_dir} does not match this network (different "
                                       "sizes); use the flags of the interrupted run, or another --out")
                    var.set_value(value)
                name, pos, has_gauss, cached = meta["rng"]
                np.random.set_state((name, ckpt["rng_keys"], pos, has_gauss, cached))
                order = ckpt["order"]
        except RunError:
            raise
        except (ValueError, TypeError) + DAMAGED_NUMPY_FILE as e:
            first_line = str(e).splitlines()[0] if str(e) else ""
            raise RunError(f"cannot read the checkpoint in {self.out_dir} ({type(e).__name__}: {first_line}); it is "
                           "damaged: delete the folder's checkpoint.npz to start over")
        return meta, order

    def _read_log_rows(self):
        if not os.path.exists(self.path(LOG)):
            return []
        with open(self.path(LOG)) as f:
            return [json.loads(line) for line in f.read().splitlines() if line.strip()]

    def _check_same_run(self, meta):
        info = json.loads(_json(self.info))  # compare as JSON sees both
        changed = sorted(key for key in RESUME_MUST_MATCH if meta["info"].get(key) != info.get(key))
        if meta.get("data_unrecorded") and "data" in changed:
            # A version-1 checkpoint did not record its data files: nothing to compare them with.
            print(f"note: the checkpoint in {self.out_dir} does not record which data files it was trained on (written "
                  "by an older version); resuming with the files found now")
            changed.remove("data")
        if "data" in changed:
            raise RunError(f"the run in {self.out_dir} was trained on other data files than the ones found now; resume "
                           "it with its original --data-dir, or choose another --out")
        if changed:
            raise RunError(f"the run in {self.out_dir} was started with other settings ({', '.join(changed)} differ); "
                           "resume it with its original flags, or choose another --out")
        if meta["n_state"] != len(self.state_vars):
            raise RunError(f"the checkpoint in {self.out_dir} is from a different network; start a new run with "
                           "another --out, or drop --resume")

    def _settle_parameters(self, best_epoch):
        """Promote the staged parameters of the committed best epoch; drop those of uncommitted epochs."""
        prefix = "." + self.params_file + ".epoch"
        for name in os.listdir(self.out_dir):
            if name.startswith(prefix):
                epoch = name[len(prefix):]
                if epoch == str(best_epoch) and best_epoch <= len(self.rows):
                    os.replace(self.path(name), self.path(self.params_file))
                    _fsync_folder(self.out_dir)
                    fault_point("parameters:promoted")
                else:
                    os.remove(self.path(name))

    # ------------------------------------------------------------------------------------------ each epoch
    def stage_parameters(self, epoch):
        """All parameter values in get_all_param_values order as arr_0, arr_1, ... (ORIGINALS.md §2.5), under a
        staging name until the epoch is committed."""
        if self.out_dir:
            atomic_savez(self._staged(epoch), *lasagne.layers.get_all_param_values(self.model))

    def end_epoch(self, row, summary, order):
        """The commit point of an epoch: write the checkpoint, then derive everything else from it."""
        if not self.out_dir:
            return
        self.rows.append(_finite(row))
        rng = np.random.get_state()
        arrays = {f"state_{i}": v.get_value() for i, v in enumerate(self.state_vars)}
        meta = dict(format=FORMAT_VERSION, summary=_finite(summary), rows=self.rows, info=self.info,
                    rng=[rng[0], rng[2], rng[3], rng[4]], n_state=len(self.state_vars))
        atomic_savez(self.path(CHECKPOINT), order=order, rng_keys=rng[1], meta=np.array(_json(meta)), **arrays)
        self._settle_parameters(summary["best_epoch"])
        self._write_derived(summary)

    def _write_derived(self, summary):
        atomic_write_json(self.path(RESULTS), self.summary(summary))
        atomic_write_bytes(self.path(LOG), "".join(_json(row) + "\n" for row in self.rows).encode())

    def summary(self, summary):
        out = dict(self.info)
        out.update(summary)
        out["finished"] = summary["epochs_done"] == summary["epochs"]
        return _finite(out)
