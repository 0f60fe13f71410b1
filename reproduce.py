"""Reproduce the papers' result tables with one command, on this machine or on a Slurm cluster.

    python reproduce.py --budget smoke --data-dir DIR                 # every row for a few minutes each
    python reproduce.py --only 'mnist-*' --budget short --data-dir DIR --runs runs/short
    python reproduce.py --engine slurm --slurm-args "--partition=cpu --time=3-00:00:00 --cpus-per-task=8"
    python reproduce.py --status          # each row: queued, running epoch k/N, done, failed
    python reproduce.py --report          # rebuild RUNS/TABLE.md, TABLE.json, curves/, overview.png

Each row is one cell of [BC] Table 2 or [BNN] Table 1 (published.py) and one run of an experiment script,
`python mnist.py --method M [budget flags] --data-dir DIR/mnist --out RUNS/ROW --resume`, in its own folder.
Re-running is safe: finished rows are skipped, interrupted ones continue from their last finished epoch, and a
runs folder made with other settings is refused. docs/reproduce.md has the budgets and the measured times.
"""
import argparse
import fcntl
import fnmatch
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections import OrderedDict

import published
import tables
from plumbing import cli, datasets
from plumbing.errors import RunError, UsageError

# Row name -> (experiment script's data set, --method). One line per row; its published number is in published.py.
ROWS = OrderedDict([
    ("mnist-bnn", ("mnist", "binarynet")),
    ("mnist-bc-det", ("mnist", "bc-det")),
    ("mnist-bc-stoch", ("mnist", "bc-stoch")),
    ("mnist-float", ("mnist", "float")),
    ("cifar10-bnn", ("cifar10", "binarynet")),
    ("cifar10-bc-det", ("cifar10", "bc-det")),
    ("cifar10-bc-stoch", ("cifar10", "bc-stoch")),
    ("cifar10-float", ("cifar10", "float")),
    ("svhn-bnn", ("svhn", "binarynet")),
    ("svhn-bc-det", ("svhn", "bc-det")),
    ("svhn-bc-stoch", ("svhn", "bc-stoch")),
    ("svhn-float", ("svhn", "float")),
    ("mnist-bnn-torch7", ("mnist", "binarynet-torch7")),
    ("cifar10-bnn-torch7", ("cifar10", "binarynet-torch7")),
    ("svhn-bnn-torch7", ("svhn", "binarynet-torch7")),
])
SCRIPTS = {"mnist": "mnist.py", "cifar10": "cifar10.py", "svhn": "svhn.py"}

# Budget -> flags per data set (a row name overrides its data set). "paper" is the original schedules.
# smoke: a plumbing check, at most ~3 minutes per row on 2 cores; short: a reduced run of at most ~1 hour per row
# on 2 cores (docs/reproduce.md has the times and errors measured here). "tiny" is for the tests (seconds).
BUDGETS = OrderedDict([
    ("smoke", {"mnist": "--units 128 --train-size 5000 --epochs 2",
               "cifar10": "--width 0.125 --train-size 2000 --epochs 1",
               "svhn": "--no-extra --width 0.125 --train-size 2000 --epochs 1"}),
    ("short", {"mnist": "--units 1024 --epochs 30",
               "cifar10": "--width 0.25 --train-size 20000 --epochs 10",
               "svhn": "--no-extra --width 0.25 --epochs 10"}),
    ("paper", {"mnist": "", "cifar10": "", "svhn": ""}),
    ("tiny", {"mnist": "--units 16 --batch-size 50 --epochs 12",
              "cifar10": "--width 0.03 --batch-size 20 --train-size 100 --epochs 2",
              "svhn": "--no-extra --width 0.03 --batch-size 20 --train-size 100 --epochs 2"}),
])
# Peak memory of one row (GiB, rounded up from measurements here), for the default --jobs.
MEMORY_GIB = {"mnist": 2, "cifar10": 3, "svhn": 3}
PAPER_MEMORY_GIB = {"mnist": 2, "cifar10": 4, "svhn": 16}  # full SVHN: 6.9 GiB float32, twice for BC's shuffle
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
HERE = os.path.dirname(os.path.abspath(__file__))
FOLDER_MUST_MATCH = ("budget", "data_dir")
ROW_MUST_MATCH = ("dataset", "method", "flags", "data_folder")
POLL_SECONDS = 1.0
RUNNING = "running.json"  # RUNS/ROW/running.json: pid and host of a local run while it runs
# Slurm job states in which a job still holds or will get a node (squeue's long names).
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                 "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "SPECIAL_EXIT", "RESV_DEL_HOLD"}


# ---------------------------------------------------------------------------------------------------------
# Rows, budgets and commands
# ---------------------------------------------------------------------------------------------------------
def select_rows(only):
    """Rows named by --only: a comma list of names or globs ('mnist-*'); all rows when None."""
    if not only:
        return list(ROWS)
    chosen = []
    for pattern in [p.strip() for p in only.split(",") if p.strip()]:
        matches = [row for row in ROWS if fnmatch.fnmatchcase(row, pattern)]
        if not matches:
            raise UsageError(f"--only {pattern!r} matches no row; rows are {', '.join(ROWS)}")
        chosen += [row for row in matches if row not in chosen]
    return chosen


def budget_flags(budget, row):
    dataset = ROWS[row][0]
    table = BUDGETS[budget]
    return shlex.split(table.get(row, table[dataset]))


def _flag_values(flags):
    """{'--epochs': '20', '--no-extra': True, ...} from a flag list."""
    values, i = {}, 0
    while i < len(flags):
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            values[flags[i]] = flags[i + 1]
            i += 2
        else:
            values[flags[i]] = True
            i += 1
    return values


def original_schedule(row):
    dataset, method = ROWS[row]
    family = cli.METHODS[method][0] if method in cli.METHODS else None
    return published.ORIGINAL_SCHEDULES.get((dataset, family), {})


def reductions(row, flags):
    """Every way a budget's flags depart from the original script's schedule, in words."""
    original, values, out = original_schedule(row), _flag_values(flags), []
    if "--epochs" in values:
        epochs = values["--epochs"]
        lr_rule = original.get("lr_rule", f"LR decay recomputed to reach LR_fin in {epochs}")
        out.append(f"{epochs} epochs instead of {original.get('epochs', 'the original count')} ({lr_rule})")
    if "--train-size" in values:
        out.append(f"first {values['--train-size']} training rows instead of {original.get('train_rows', 'all')}")
    if "--units" in values:
        out.append(f"{values['--units']} hidden units per layer instead of {original.get('units')}")
    if "--width" in values:
        channels = "-".join(str(w) for w in original.get("widths", ()))
        out.append(f"layer widths x{values['--width']} ({channels} convolution channels and 1024 dense units scaled)")
    if "--no-extra" in values:
        out.append("SVHN without extra_32x32.mat (69257 training and 4000 validation images instead of 598388 "
                   "and 6000)")
    if "--batch-size" in values:
        out.append(f"batch size {values['--batch-size']} instead of {original.get('batch_size')}")
    return out


def planned_epochs(row, flags):
    values = _flag_values(flags)
    return int(values["--epochs"]) if "--epochs" in values else original_schedule(row).get("epochs")


def data_folder(data_dir, dataset):
    """The folder a row's script reads: DIR/<dataset> with --data-dir, else the scripts' download folder."""
    if data_dir is None:
        return os.path.join(datasets.DEFAULT_DATA_DIR, dataset)
    return os.path.join(os.path.abspath(data_dir), dataset)


def row_command(row, budget, runs, data_dir, python=None):
    """The exact argv of one row's run."""
    dataset, method = ROWS[row]
    command = [python or sys.executable, SCRIPTS[dataset], "--method", method] + budget_flags(budget, row)
    if data_dir is not None:
        command += ["--data-dir", data_folder(data_dir, dataset)]
    return command + ["--out", os.path.join(os.path.abspath(runs), row), "--resume"]


def row_settings(row, budget, runs, data_dir):
    """What RUNS/ROW/reproduce.json records about a row (and what a later run must match)."""
    dataset, method = ROWS[row]
    flags = budget_flags(budget, row)
    return OrderedDict(row=row, dataset=dataset, method=method, budget=budget, flags=flags,
                       reductions=reductions(row, flags), epochs=planned_epochs(row, flags),
                       data_dir=None if data_dir is None else os.path.abspath(data_dir),
                       data_folder=data_folder(data_dir, dataset),
                       command=row_command(row, budget, runs, data_dir), project=HERE)


def folder_settings(budget, data_dir):
    return OrderedDict(budget=budget, data_dir=None if data_dir is None else os.path.abspath(data_dir),
                       rows=list(ROWS), created=time.strftime("%Y-%m-%d %H:%M:%S"))


# ---------------------------------------------------------------------------------------------------------
# The runs folder: check, skip, resume, refuse
# ---------------------------------------------------------------------------------------------------------
def _differences(old, new, keys):
    return [key for key in keys if old.get(key) != new.get(key)]


def check_folder(runs, budget, data_dir):
    """Refuse (one line) a runs folder made with another budget or data folder."""
    old = tables.read_json(os.path.join(runs, tables.RUN_SETTINGS))
    if old is None:
        return
    new = folder_settings(budget, data_dir)
    changed = _differences(old, new, FOLDER_MUST_MATCH)
    if changed:
        made_with = ", ".join(f"{k.replace('_', '-')} {old.get(k)}" for k in changed)
        raise UsageError(f"{runs} was made with {made_with}; rerun with those settings or choose another --runs")


def row_plan(runs, row, settings):
    """'run' (new or interrupted: the command has --resume) or 'skip' (finished); refuses a foreign folder."""
    folder = os.path.join(runs, row)
    old = tables.read_json(os.path.join(folder, tables.RUN_SETTINGS))
    results = tables.read_json(os.path.join(folder, "results.json"))
    if old is None:
        if results is not None or os.path.exists(os.path.join(folder, "checkpoint.npz")):
            raise UsageError(f"{folder} holds a run that reproduce.py did not start; move it away or choose another "
                             "--runs")
        return "run"
    changed = _differences(old, settings, ROW_MUST_MATCH)
    if changed:
        old_values = "; ".join(f"{k}={old.get(k)}" for k in changed)
        raise UsageError(f"{folder} was made with other settings ({', '.join(changed)} differ: {old_values}); rerun "
                         "with those settings or choose another --runs")
    if results is not None and results.get("finished"):
        return "skip"
    return "run"


def write_settings(runs, budget, data_dir, rows):
    """Create the runs folder's and each row's reproduce.json (kept when they exist: the first run's)."""
    os.makedirs(runs, exist_ok=True)
    path = os.path.join(runs, tables.RUN_SETTINGS)
    if not os.path.exists(path):
        tables.write_text(path, json.dumps(folder_settings(budget, data_dir), indent=2) + "\n")
    for row in rows:
        os.makedirs(os.path.join(runs, row), exist_ok=True)
        path = os.path.join(runs, row, tables.RUN_SETTINGS)
        if not os.path.exists(path):
            tables.write_text(path, json.dumps(row_settings(row, budget, runs, data_dir), indent=2) + "\n")


def check_data_dir(data_dir, rows):
    if data_dir is None:
        return
    for dataset in sorted({ROWS[row][0] for row in rows}):
        if not os.path.isdir(os.path.join(data_dir, dataset)):
            name = tables.DATASET_NAMES[dataset]
            raise UsageError(f"--data-dir {data_dir} has no {dataset}/ folder; put the {name} files in "
                             f"{data_dir}/{dataset}/ (or leave those rows out with --only)")


class RunsLock(object):
    """One reproduce.py at a time per runs folder (an flock, released by the kernel when the process dies)."""

    def __init__(self, runs):
        self.path = os.path.join(runs, ".reproduce.lock")
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            other = self.file.read().strip() or "unknown"
            self.file.close()
            folder = os.path.dirname(self.path)
            raise RunError(f"another reproduce.py (pid {other}) is running on {folder}; wait for it or use another "
                           "--runs")
        self.file.truncate(0)
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc):
        self.file.close()


# ---------------------------------------------------------------------------------------------------------
# Machine: default --jobs, thread split, host description
# ---------------------------------------------------------------------------------------------------------
def cpu_count():
    return len(os.sched_getaffinity(0))


def memory_gib(field="MemAvailable"):
    """A /proc/meminfo field in GiB (4 when it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return 4.0


def default_jobs(rows, budget, cores=None, gib=None):
    """As many parallel rows as there are cores, fewer when the rows' memory would not fit."""
    cores = cores or cpu_count()
    gib = memory_gib() if gib is None else gib
    need = max((PAPER_MEMORY_GIB if budget == "paper" else MEMORY_GIB)[ROWS[row][0]] for row in rows)
    return max(1, min(len(rows), cores, int(gib // need)))


def thread_env(threads):
    """The BLAS / OpenMP thread variables for one run."""
    return {name: str(threads) for name in THREAD_VARIABLES}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    """The 1-minute load average: how busy the machine was (a row's time means little on a crowded machine)."""
    return round(os.getloadavg()[0], 2)


def describe_host(threads=None):
    return OrderedDict(hostname=platform.node(), cpu=cpu_model(), cpus=cpu_count(),
                       memory_gib=round(memory_gib("MemTotal"), 1),
                       threads=threads or os.environ.get("OMP_NUM_THREADS"),
                       slurm_job=os.environ.get("SLURM_JOB_ID"), python=platform.python_version(),
                       time=time.strftime("%Y-%m-%d %H:%M:%S"), load_average=load_average())


def cpu_seconds(pid):
    """CPU time (user + system) a process has used so far, from /proc; None where it cannot be read.

    On a crowded machine this, not the wall time, tells how long a row takes on a quiet one (one thread each)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def record_epoch_cpu(runs, row, epochs, cpu, pid):
    """RUNS/ROW/cpu.jsonl: the run's CPU time when its log reached `epochs` lines (sampled every second)."""
    if cpu is not None:
        append_jsonl(os.path.join(runs, row, tables.EPOCH_CPU), dict(epoch=epochs, cpu_seconds=round(cpu, 1),
                                                                     pid=pid))


def append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------------------
# Status of a row (runs folder + process or Slurm job)
# ---------------------------------------------------------------------------------------------------------
def _eta(log, planned):
    if not log or not planned:
        return ""
    per_epoch = sum(e["seconds"] for e in log) / len(log)
    left = max(0, planned - len(log)) * per_epoch
    return "ETA " + tables._duration(left)


def _err(value):
    return "—" if value is None else f"{value:.2f}%"


def last_line(path):
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def progress_text(runs, row):
    """'epoch k/N, val x%, test y%, ETA ...' from the row's log, or what is known before the first epoch."""
    folder = os.path.join(runs, row)
    settings = tables.read_json(os.path.join(folder, tables.RUN_SETTINGS), {}) or {}
    results = tables.read_json(os.path.join(folder, "results.json"))
    log = tables.read_log(os.path.join(folder, "log.jsonl"))
    planned = (results or {}).get("epochs") or settings.get("epochs")
    if results and results.get("finished"):
        return (f"done: test {_err(results.get('test_error'))} at epoch {results.get('best_epoch')} "
                f"({results.get('epochs_done')} epochs, {tables._duration(results.get('seconds'))})")
    if not log:
        return "no finished epoch yet"
    last = log[-1]
    return (f"epoch {last['epoch']}/{planned}, val {_err(last['val_error'])}, test {_err(last['test_error'])}, "
            f"{_eta(log, planned)}")


def finished(runs, row):
    results = tables.read_json(os.path.join(runs, row, "results.json"))
    return bool(results and results.get("finished"))


# ---------------------------------------------------------------------------------------------------------
# Local engine
# ---------------------------------------------------------------------------------------------------------
class StatusBoard(object):
    """One line per row, redrawn in place on a terminal; on a pipe, a line whenever a row's text changes."""

    def __init__(self, rows, stream=sys.stdout):
        self.rows, self.stream, self.tty = rows, stream, stream.isatty()
        self.texts, self.drawn = OrderedDict((row, "waiting") for row in rows), 0
        self.width = max([len(row) for row in rows] + [1])

    def update(self, row, text):
        if self.texts[row] == text:
            return
        self.texts[row] = text
        if not self.tty:
            self.stream.write(f"{row.ljust(self.width)}  {text}\n")
            self.stream.flush()

    def draw(self):
        if not self.tty:
            return
        out = f"\033[{self.drawn}F" if self.drawn else ""
        for row, text in self.texts.items():
            out += f"\033[K{row.ljust(self.width)}  {text}\n"
        self.stream.write(out)
        self.stream.flush()
        self.drawn = len(self.texts)


class Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def run_local(runs, rows, budget, data_dir, jobs, threads, report_rows, stream=sys.stdout):
    """Run the rows as parallel processes, `jobs` at a time with `threads` BLAS/OpenMP threads each; the report
    is rebuilt after every finished epoch. Returns the rows that failed."""
    board = StatusBoard(rows, stream)
    waiting, running, failed, cpu = list(rows), {}, [], {}
    epochs_seen = {row: len(tables.read_log(os.path.join(runs, row, "log.jsonl"))) for row in rows}
    old_handler = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                row = waiting.pop(0)
                running[row] = _start(runs, row, budget, data_dir, threads)
                board.update(row, f"started ({threads} threads), log in {os.path.join(runs, row, 'run.log')}")
            time.sleep(POLL_SECONDS)
            changed = []
            for row, (proc, log_file, started) in list(running.items()):
                code = proc.poll()
                epochs = len(tables.read_log(os.path.join(runs, row, "log.jsonl")))
                if code is None:
                    cpu[row] = cpu_seconds(proc.pid) or cpu.get(row)
                if epochs != epochs_seen[row]:
                    epochs_seen[row] = epochs
                    changed.append(row)
                    record_epoch_cpu(runs, row, epochs, cpu.get(row) if code is None else None, proc.pid)
                if code is None:
                    board.update(row, progress_text(runs, row))
                    continue
                del running[row]
                log_file.close()
                _record_exit(runs, row, proc, code, started, threads, cpu.get(row))
                changed.append(row)
                if code == 0 and finished(runs, row):
                    board.update(row, progress_text(runs, row))
                else:
                    failed.append(row)
                    board.update(row, f"failed (exit {code}): {last_line(os.path.join(runs, row, 'run.log'))}")
            if changed:
                tables.write_report(runs, report_rows, curves_for=changed)
            board.draw()
    except (KeyboardInterrupt, Interrupted):
        for row, (proc, log_file, started) in running.items():
            proc.send_signal(signal.SIGTERM)
        for row, (proc, log_file, started) in running.items():
            code = proc.wait()
            log_file.close()
            _record_exit(runs, row, proc, code, started, threads, cpu.get(row))
        tables.write_report(runs, report_rows)
        stream.write("interrupted: every row keeps its last finished epoch; rerun the same command to continue\n")
        raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    return failed


def _start(runs, row, budget, data_dir, threads, log_to="run.log"):
    """Start one row's run with `threads` threads; its output goes to RUNS/ROW/run.log (log_to=None: to ours)."""
    folder = os.path.join(runs, row)
    command = row_command(row, budget, runs, data_dir)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **thread_env(threads))
    tables.write_text(os.path.join(folder, tables.HOST), json.dumps(describe_host(threads), indent=2) + "\n")
    log_file = open(os.path.join(folder, log_to), "a") if log_to else sys.stdout
    log_file.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
    log_file.flush()
    proc = subprocess.Popen(command, cwd=HERE, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    tables.write_text(os.path.join(folder, RUNNING), json.dumps(dict(pid=proc.pid, hostname=platform.node())))
    return proc, log_file, time.time()


def running_here(folder):
    """The pid of a local run of this row that is still alive on this machine, else None."""
    info = tables.read_json(os.path.join(folder, RUNNING))
    if not info or info.get("hostname") != platform.node():
        return None
    try:
        os.kill(info["pid"], 0)
    except (OSError, KeyError, TypeError):
        return None
    return info["pid"]


def _record_exit(runs, row, proc, code, started, threads, cpu=None, engine="local"):
    if os.path.exists(os.path.join(runs, row, RUNNING)):
        os.remove(os.path.join(runs, row, RUNNING))
    append_jsonl(os.path.join(runs, row, "attempts.jsonl"), dict(
        engine=engine, job=os.environ.get("SLURM_JOB_ID"), pid=proc.pid, started=started, ended=time.time(),
        returncode=code,
        cpu_seconds=None if cpu is None else round(cpu, 1), load_average_at_end=load_average(),
        environment={name: str(threads) for name in THREAD_VARIABLES}, hostname=platform.node()))


# ---------------------------------------------------------------------------------------------------------
# Slurm engine
# ---------------------------------------------------------------------------------------------------------
def job_script(runs, row, budget, data_dir, python=None):
    """The sbatch script of one row. Requeue-safe: a requeued job runs the same script, and the row's command
    always has --resume. SIGTERM two minutes before the time limit goes to the supervisor (--run-row), which
    passes it on to the run: every finished epoch is kept."""
    folder = os.path.join(os.path.abspath(runs), row)
    python = python or sys.executable
    supervisor = [python, "reproduce.py", "--run-row", row, "--runs", os.path.abspath(runs), "--budget", budget]
    if data_dir is not None:
        supervisor += ["--data-dir", os.path.abspath(data_dir)]
    return f"""#!/bin/bash
#SBATCH --job-name=reproduce-{row}
#SBATCH --output={folder}/slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
# Written by reproduce.py. Runs, with one BLAS/OpenMP thread per CPU of the job:
#   {shlex.join(row_command(row, budget, runs, data_dir, python))}
# then rebuilds the report. A requeued job continues from the last finished epoch.
cd {shlex.quote(HERE)}
exec {shlex.join(supervisor)}
"""


def slurm_threads():
    """The CPUs Slurm gave this job (one BLAS/OpenMP thread each)."""
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def supervise_row(runs, row, budget, data_dir, threads, report_rows):
    """Run one row in the foreground (inside a Slurm job): SIGTERM/SIGINT are passed on to the run, the attempt
    (times, exit status, CPU time) is recorded and the report rebuilt at the end. Returns the run's exit status."""
    proc, log_file, started = _start(runs, row, budget, data_dir, threads, log_to=None)
    forward = lambda signum, frame: proc.send_signal(signal.SIGTERM)  # noqa: E731
    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    cpu, epochs_seen = None, len(tables.read_log(os.path.join(runs, row, "log.jsonl")))
    try:
        while proc.poll() is None:
            cpu = cpu_seconds(proc.pid) or cpu
            epochs = len(tables.read_log(os.path.join(runs, row, "log.jsonl")))
            if epochs != epochs_seen:
                epochs_seen = epochs
                record_epoch_cpu(runs, row, epochs, cpu, proc.pid)
            time.sleep(POLL_SECONDS)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    _record_exit(runs, row, proc, proc.returncode, started, threads, cpu, engine="slurm")
    tables.write_report(runs, report_rows, curves_for=[row])
    return proc.returncode


def slurm_command(name, *args):
    try:
        return subprocess.run((name,) + args, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise RunError(f"{name} is not installed here; --engine slurm needs the Slurm client commands (sbatch, squeue) "
                       "on PATH") from None
    except subprocess.TimeoutExpired:
        raise RunError(f"{name} did not answer within 60 s; check the Slurm controller (sinfo)") from None


def job_ids(runs, row):
    return [job["job"] for job in tables.read_json(os.path.join(runs, row, "slurm.json"), {}).get("jobs", [])]


def queue_states(ids):
    """{job id: (state, time used)} for the jobs Slurm still lists (finished ones stay listed for MinJobAge)."""
    if not ids:
        return {}
    result = slurm_command("squeue", "-h", "-t", "all", "-o", "%i|%T|%M", "-j", ",".join(ids))
    if result.returncode != 0 and len(ids) > 1:  # one id already forgotten by Slurm: ask one by one
        states = {}
        for job in ids:
            states.update(queue_states([job]))
        return states
    states = {}
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in ids:
            states[parts[0]] = (parts[1], parts[2])
    return states


def active_jobs(ids):
    """The jobs among `ids` that are queued, running or about to run again (requeued)."""
    return {job: state for job, state in queue_states(ids).items() if state[0] in ACTIVE_STATES}


def accounting_state(job):
    """The final state of a job from sacct, or None when accounting is not enabled."""
    result = slurm_command("sacct", "-n", "-X", "-P", "-o", "State,ExitCode", "-j", job)
    line = result.stdout.strip().splitlines()[:1]
    return line[0].replace("|", " exit ") if result.returncode == 0 and line else None


def submit_slurm(runs, rows, budget, data_dir, slurm_args, stream=sys.stdout):
    """One sbatch job per row not finished and not already queued; returns {row: job id}."""
    submitted = {}
    for row in rows:
        active = active_jobs(job_ids(runs, row)[-1:])
        if active:
            job, (state, elapsed) = next(iter(active.items()))
            stream.write(f"{row}: already in the queue as job {job} ({state})\n")
            continue
        folder = os.path.join(runs, row)
        script = os.path.join(folder, "job.sh")
        tables.write_text(script, job_script(runs, row, budget, data_dir))
        result = slurm_command("sbatch", "--parsable", *(shlex.split(slurm_args or "") + [script]))
        if result.returncode != 0:
            reason = (result.stderr.strip().splitlines() or ["?"])[-1]
            raise RunError(f"sbatch refused {row}: {reason}")
        job = result.stdout.strip().split(";")[0]
        record = tables.read_json(os.path.join(folder, "slurm.json"), {}) or {}
        record.setdefault("jobs", []).append(dict(job=job, submitted=time.strftime("%Y-%m-%d %H:%M:%S"),
                                                  sbatch_args=slurm_args or ""))
        tables.write_text(os.path.join(folder, "slurm.json"), json.dumps(record, indent=2) + "\n")
        submitted[row] = job
        stream.write(f"{row}: submitted as job {job}\n")
    return submitted


def row_status(runs, row, elapsed=True):
    """One status line for --status: Slurm's state of the row's last job and the runs folder's progress."""
    folder = os.path.join(runs, row)
    if not os.path.exists(os.path.join(folder, tables.RUN_SETTINGS)):
        return "not started"
    progress = progress_text(runs, row)
    if finished(runs, row):
        return progress
    ids = job_ids(runs, row)
    if ids:
        states = queue_states(ids[-1:])
        if ids[-1] in states and states[ids[-1]][0] in ACTIVE_STATES:
            state, time_used = states[ids[-1]]
            what = "queued" if state == "PENDING" else state.lower()
            used = ", " + time_used if elapsed else ""
            return f"{what} (job {ids[-1]}{used}), {progress}"
        final = states[ids[-1]][0] if ids[-1] in states else accounting_state(ids[-1]) or "no longer in the queue"
        tail = last_line(os.path.join(folder, f"slurm-{ids[-1]}.out"))
        return f"failed or stopped (job {ids[-1]}: {final}), {progress}; last log line: {tail}"
    pid = running_here(folder)
    if pid:
        return f"running (pid {pid}), {progress}"
    attempts = tables.read_log(os.path.join(folder, "attempts.jsonl"))
    if attempts and attempts[-1]["returncode"] not in (0, None):
        last_log_line = last_line(os.path.join(folder, "run.log"))
        return f"failed (exit {attempts[-1]['returncode']}), {progress}; last log line: {last_log_line}"
    return "interrupted or running elsewhere, " + progress


def wait_slurm(runs, rows, report_rows, stream=sys.stdout):
    """Follow submitted jobs until none is queued or running; the report is rebuilt after every finished epoch."""
    board = StatusBoard(rows, stream)
    epochs_seen = {row: -1 for row in rows}
    while True:
        active = active_jobs([ids[-1] for ids in (job_ids(runs, row) for row in rows) if ids])
        changed = []
        for row in rows:
            epochs = len(tables.read_log(os.path.join(runs, row, "log.jsonl")))
            if epochs != epochs_seen[row]:
                epochs_seen[row] = epochs
                changed.append(row)
            board.update(row, row_status(runs, row, elapsed=board.tty))
        if changed:
            tables.write_report(runs, report_rows, curves_for=changed)
        board.draw()
        if not active:
            break
        time.sleep(2 * POLL_SECONDS)
    return [row for row in rows if not finished(runs, row)]


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------
def parse_args(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    for i in range(len(argv) - 1):  # "--slurm-args --time=1:00" would read the value as an option of ours
        if argv[i] == "--slurm-args":
            argv[i:i + 2] = ["--slurm-args=" + argv[i + 1]]
            break
    p = cli.Parser(__doc__.splitlines()[0], formatter_class=None)  # the help texts name their defaults
    p.add_argument("--only", metavar="ROWS",
                   help="comma list of rows or globs, e.g. 'mnist-*' (default: all): " + ", ".join(ROWS))
    p.add_argument("--budget", default="paper", choices=list(BUDGETS), metavar="{smoke,short,paper}",
                   help="smoke: minutes per row (plumbing check); short: about an hour per row on 2 cores; "
                        "paper: the original schedules (the default)")
    p.add_argument("--data-dir", help="folder holding mnist/, cifar10/, svhn/ (default: the scripts download)")
    p.add_argument("--runs", help="runs folder (default: runs/BUDGET)")
    p.add_argument("--engine", choices=["local", "slurm"], default="local",
                   help="local (the default): parallel processes here; slurm: one sbatch job per row")
    p.add_argument("--jobs", type=cli.positive_int,
                   help="local engine: rows run at once (default: from the cores and the free memory)")
    p.add_argument("--slurm-args", default="", help='options for sbatch, e.g. "--partition=cpu --time=2-0 '
                                                     '--cpus-per-task=8 --mem=16G"')
    p.add_argument("--wait", action="store_true", help="slurm engine: follow the jobs until they end")
    p.add_argument("--report", action="store_true", help="only rebuild TABLE.md, TABLE.json and the plots")
    p.add_argument("--dry-run", action="store_true", help="print the exact commands, run nothing")
    p.add_argument("--status", action="store_true", help="print each row's state (queue and runs folder)")
    p.add_argument("--run-row", metavar="ROW", help=argparse.SUPPRESS)  # inside a Slurm job (job.sh)
    args = p.parse_args(argv)
    args.runs = args.runs or os.path.join("runs", args.budget)
    return args


def dry_run(runs, rows, budget, data_dir, engine, jobs, threads, slurm_args, stream=sys.stdout):
    for row in rows:
        plan = row_plan(runs, row, row_settings(row, budget, runs, data_dir))
        if plan == "skip":
            stream.write(f"# {row}: finished, skipped\n")
            continue
        if engine == "local":
            env = " ".join(f"{k}={v}" for k, v in thread_env(threads).items())
            command = shlex.join(row_command(row, budget, runs, data_dir))
            stream.write(f"cd {shlex.quote(HERE)} && {env} {command}\n")
        else:
            script = os.path.join(os.path.abspath(runs), row, "job.sh")
            stream.write(f"# {script} ({row}):\n{job_script(runs, row, budget, data_dir)}")
            stream.write(shlex.join(["sbatch", "--parsable"] + shlex.split(slurm_args) + [script]) + "\n\n")
    if engine == "local":
        stream.write(f"# {jobs} rows at a time, {threads} threads each\n")


def main(argv=None):
    args = parse_args(argv)
    if args.run_row:
        if args.run_row not in ROWS:
            raise UsageError(f"unknown row {args.run_row!r}; rows are {', '.join(ROWS)}")
        return supervise_row(args.runs, args.run_row, args.budget, args.data_dir, slurm_threads(), list(ROWS))
    rows = select_rows(args.only)
    runs = args.runs
    if args.report or args.status:
        settings = tables.read_json(os.path.join(runs, tables.RUN_SETTINGS))
        if settings is None:
            raise UsageError(f"{runs} is not a runs folder made by reproduce.py (no {tables.RUN_SETTINGS}); pass "
                             "--runs")
        if args.status:
            width = max(len(row) for row in rows)
            for row in rows:
                print(f"{row.ljust(width)}  {row_status(runs, row)}")
        table = tables.write_report(runs, list(ROWS))  # rows added since the folder was made show as missing
        if args.report:
            print(tables.markdown(table))
        return 0
    check_data_dir(args.data_dir, rows)
    check_folder(runs, args.budget, args.data_dir)
    plans = {row: row_plan(runs, row, row_settings(row, args.budget, runs, args.data_dir)) for row in rows}
    todo = [row for row in rows if plans[row] == "run"]
    jobs = min(args.jobs or default_jobs(rows, args.budget), max(1, len(todo)))
    threads = max(1, cpu_count() // jobs)
    if args.dry_run:
        dry_run(runs, rows, args.budget, args.data_dir, args.engine, jobs, threads, args.slurm_args)
        return 0
    write_settings(runs, args.budget, args.data_dir, rows)
    for row in rows:
        if plans[row] == "skip":
            print(f"{row}: finished, skipped ({progress_text(runs, row)})")
    if not todo:
        failed = []
    elif args.engine == "slurm":
        with RunsLock(runs):
            submit_slurm(runs, todo, args.budget, args.data_dir, args.slurm_args)
        failed = wait_slurm(runs, rows, list(ROWS)) if args.wait else []
    else:
        with RunsLock(runs):
            print(f"{len(todo)} rows to run, {jobs} at a time, {threads} BLAS/OpenMP threads each; runs folder {runs}")
            failed = run_local(runs, todo, args.budget, args.data_dir, jobs, threads, list(ROWS))
    table = tables.write_report(runs, list(ROWS))
    print(f"report: {os.path.join(runs, tables.TABLE_MD)} ({table['title']})")
    if failed:
        print(f"failed: {', '.join(failed)} (see RUNS/ROW/run.log; rerun the same command to retry)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli.main_guard(main))
