"""reproduce.py --engine slurm against a real single-node Slurm (Debian's slurm-wlm and munge) that the fixture
starts in a temporary folder with scripts/slurm_local.sh. Where Slurm cannot be started the test fails and says
why: install the packages (apt-get install slurm-wlm munge) and run as root.

Two tiny rows are submitted; one job is cancelled with scancel after its first epoch and submitted again by
rerunning reproduce.py, the other is requeued by Slurm (scontrol requeue) mid-run. Both must end with the numbers
of an uninterrupted run of the same rows.

All of it is `slow` (daemons, real training jobs): `make test` and CI run it; the fast selection (`-m "not slow"`,
also the Docker image's `test`, whose image has no Slurm) leaves it out.
"""
import json
import os
import subprocess
import sys

import pytest

import reproduce
from test_reproduce import epochs_committed, log_values, wait_for, write_tiny_mnist

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "slurm_local.sh")
ROWS = "mnist-bnn,mnist-bc-det"
EPOCHS = 12  # reproduce.BUDGETS["tiny"] for MNIST


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """The environment (SLURM_CONF) of a single-node Slurm running for this module's tests."""
    folder = str(tmp_path_factory.mktemp("slurm"))
    try:
        start = subprocess.run(["bash", SCRIPT, "start", folder], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        start = None
    if start is None or start.returncode != 0:
        subprocess.run(["bash", SCRIPT, "stop", folder], capture_output=True, timeout=120)
        reason = "timed out" if start is None else (start.stderr.strip().splitlines() or ["no message"])[-1]
        pytest.fail(f"a single-node Slurm could not be started with scripts/slurm_local.sh: {reason}")
    yield dict(os.environ, SLURM_CONF=os.path.join(folder, "slurm.conf"))
    subprocess.run(["bash", SCRIPT, "stop", folder], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def slow_data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurmdata")
    write_tiny_mnist(str(root / "mnist"), 8000, 1000, seed=1)
    return str(root)


def reproduce_cmd(env, *args, timeout=1800):
    return subprocess.run([sys.executable, "reproduce.py"] + list(args), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def slurm_cmd(env, *args):
    done = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def last_job(runs, row):
    return reproduce.job_ids(runs, row)[-1]


def job_state(env, job):
    out = slurm_cmd(env, "squeue", "-h", "-t", "all", "-o", "%T", "-j", job).strip()
    return out or "GONE"


def test_slurm_runs_rows_and_resumes_cancelled_and_requeued_jobs(slurm, slow_data_dir, tmp_path):
    interrupted, reference = str(tmp_path / "interrupted"), str(tmp_path / "reference")
    common = ["--engine", "slurm", "--budget", "tiny", "--only", ROWS, "--data-dir", slow_data_dir,
              "--slurm-args", "--cpus-per-task=1"]
    first = reproduce_cmd(slurm, *(common + ["--runs", interrupted]))
    assert first.returncode == 0 and first.stdout.count("submitted as job") == 2, first.stdout + first.stderr
    ref = reproduce_cmd(slurm, *(common + ["--runs", reference]))  # queued behind the first two (2 CPUs)
    assert ref.returncode == 0, ref.stdout + ref.stderr

    # Interrupt both rows after their first finished epoch: scancel one, requeue the other.
    pending = {"mnist-bnn": ["scancel"], "mnist-bc-det": ["scontrol", "requeue"]}

    def interrupt_after_first_epoch():
        for row in list(pending):
            if epochs_committed(os.path.join(interrupted, row)) >= 1:
                slurm_cmd(slurm, *(pending.pop(row) + [last_job(interrupted, row)]))
        return not pending

    wait_for(interrupt_after_first_epoch, 900, "the first epoch of both rows")
    cancelled = last_job(interrupted, "mnist-bnn")
    wait_for(lambda: job_state(slurm, cancelled) in ("CANCELLED", "GONE"), 120, "the cancelled job to end")
    stopped = json.load(open(os.path.join(interrupted, "mnist-bnn", "results.json")))
    assert 1 <= stopped["epochs_done"] < EPOCHS and not stopped["finished"], "scancel came too late"
    status = reproduce_cmd(slurm, "--runs", interrupted, "--status", "--only", "mnist-bnn")
    assert f"failed or stopped (job {cancelled}: CANCELLED)" in status.stdout, status.stdout

    # Rerun the same command: the cancelled row gets a new job, the requeued one is left to Slurm; wait for both.
    again = reproduce_cmd(slurm, *(common + ["--runs", interrupted, "--wait"]))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "mnist-bnn: submitted as job" in again.stdout
    assert f"mnist-bc-det: already in the queue as job {last_job(interrupted, 'mnist-bc-det')}" in again.stdout
    assert len(reproduce.job_ids(interrupted, "mnist-bnn")) == 2

    wait_for(lambda: all(job_state(slurm, last_job(reference, row)) in ("COMPLETED", "GONE")
                         for row in ROWS.split(",")), 900, "the uninterrupted reference jobs")
    for row in ROWS.split(","):
        out = open(os.path.join(interrupted, row, f"slurm-{last_job(interrupted, row)}.out")).read()
        assert "Resuming after epoch" in out, row
        mine = json.load(open(os.path.join(interrupted, row, "results.json")))
        theirs = json.load(open(os.path.join(reference, row, "results.json")))
        assert mine["finished"] and theirs["finished"]
        for key in ("test_error", "test_loss", "best_epoch", "best_val_error", "val_error", "epochs_done"):
            assert mine[key] == theirs[key], (row, key)
        assert log_values(os.path.join(interrupted, row, "log.jsonl")) == \
            log_values(os.path.join(reference, row, "log.jsonl"))

    final = reproduce_cmd(slurm, "--runs", interrupted, "--status", "--only", ROWS)
    assert final.stdout.count("done: test") == 2, final.stdout
    table = json.load(open(os.path.join(interrupted, "TABLE.json")))
    assert [r["epochs_done"] for r in table["rows"] if r["row"] in ROWS.split(",")] == [EPOCHS, EPOCHS]
    for row in ROWS.split(","):  # the supervisor recorded each job's attempt with its CPU time and 1 thread
        attempts = [json.loads(line) for line in open(os.path.join(interrupted, row, "attempts.jsonl"))]
        assert [a["job"] for a in attempts][-1] == last_job(interrupted, row) and attempts[-1]["returncode"] == 0
        assert attempts[-1]["cpu_seconds"] > 0 and attempts[-1]["environment"]["OMP_NUM_THREADS"] == "1"


def test_slurm_status_of_a_folder_without_jobs(slurm, tmp_path):
    reproduce.write_settings(str(tmp_path), "tiny", None, [])
    done = reproduce_cmd(slurm, "--runs", str(tmp_path), "--status", "--only", "svhn-*")
    assert done.returncode == 0 and done.stdout.count("not started") == 5  # 4 svhn rows + svhn-bnn-torch7


def test_sbatch_refusal_is_one_line(slurm, tmp_path, slow_data_dir):
    done = reproduce_cmd(slurm, "--engine", "slurm", "--budget", "tiny", "--only", "mnist-float", "--data-dir",
                         slow_data_dir, "--runs", str(tmp_path), "--slurm-args", "--partition=nowhere")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "sbatch refused mnist-float" in done.stderr
