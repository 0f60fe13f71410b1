"""reproduce.py and its report (tables.py): the table builder on hand-written runs folders, the plots, the
skip / resume / refuse rules, and the local engine running tiny rows on tiny generated MNIST-format data."""
import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

import published
import reproduce
import tables
from plumbing import datasets
from plumbing.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_EPOCHS = 12  # reproduce.BUDGETS["tiny"] for MNIST


# ---------------------------------------------------------------------------------------------------------
# Tiny MNIST-format data (a local writer; tests/conftest.py may get a shared one later)
# ---------------------------------------------------------------------------------------------------------
def write_idx(path, array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_tiny_mnist(folder, n_train, n_test, seed=0):
    """Learnable MNIST-format files: class k lights rows 2k..2k+2 of noisy 28x28 images."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.randint(0, 10, n)
        images = rng.randint(0, 120, (n, 28, 28))
        for k in range(10):
            images[labels == k, 2 * k:2 * k + 3, :] += 100
        write_idx(os.path.join(folder, prefix + "-images-idx3-ubyte.gz"), images)
        write_idx(os.path.join(folder, prefix + "-labels-idx1-ubyte.gz"), labels)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A --data-dir with a tiny mnist/ (600 training rows: 500 train + 100 validation, 100 test)."""
    root = tmp_path_factory.mktemp("data")
    write_tiny_mnist(str(root / "mnist"), 600, 100)
    return str(root)


@pytest.fixture(scope="module")
def slow_data_dir(tmp_path_factory):
    """A --data-dir whose epochs take long enough (~0.2 s) to interrupt a run between two of them."""
    root = tmp_path_factory.mktemp("slowdata")
    write_tiny_mnist(str(root / "mnist"), 8000, 1000, seed=1)
    return str(root)


def run_reproduce(*args, timeout=900):
    return subprocess.run([sys.executable, "reproduce.py"] + list(args), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def epochs_committed(folder):
    """Epochs a run folder holds for good: results.json is the last file an epoch writes."""
    results = tables.read_json(os.path.join(folder, "results.json"))
    return results["epochs_done"] if results else 0


def log_values(path):
    """log.jsonl without the timings (the numbers an interrupted run must reproduce exactly)."""
    return [{k: v for k, v in e.items() if k != "seconds"} for e in tables.read_log(path)]


# ---------------------------------------------------------------------------------------------------------
# Rows, budgets, commands
# ---------------------------------------------------------------------------------------------------------
def test_only_takes_globs_and_comma_lists():
    assert reproduce.select_rows("mnist-*") == ["mnist-bnn", "mnist-bc-det", "mnist-bc-stoch", "mnist-float",
                                                "mnist-bnn-torch7"]
    assert reproduce.select_rows("*-torch7") == ["mnist-bnn-torch7", "cifar10-bnn-torch7", "svhn-bnn-torch7"]
    assert reproduce.select_rows("svhn-bnn, cifar10-float") == ["svhn-bnn", "cifar10-float"]
    assert reproduce.select_rows(None) == list(reproduce.ROWS)


def test_only_refuses_a_pattern_matching_no_row():
    with pytest.raises(UsageError, match="matches no row"):
        reproduce.select_rows("imagenet-*")


def test_every_budget_reduction_is_written_out():
    flags = reproduce.budget_flags("smoke", "mnist-bnn")
    assert reproduce.reductions("mnist-bnn", flags) == [
        "2 epochs instead of 1000 (LR decay recomputed to reach LR_fin in 2)",
        "first 5000 training rows instead of 50000", "128 hidden units per layer instead of 4096"]
    assert reproduce.reductions("mnist-bnn-torch7", ["--units", "1024", "--epochs", "30"]) == [
        "30 epochs instead of 1000 (learning rate still halved every 20 epochs)",
        "1024 hidden units per layer instead of 2048"]
    svhn = reproduce.reductions("svhn-bc-det", reproduce.budget_flags("smoke", "svhn-bc-det"))
    assert any(text.startswith("SVHN without extra_32x32.mat") for text in svhn)
    assert any(text.startswith("layer widths x0.125") for text in svhn)


def test_the_paper_budget_has_no_reduction():
    for row in reproduce.ROWS:
        assert reproduce.reductions(row, reproduce.budget_flags("paper", row)) == []


def test_row_command_is_the_script_with_resume(tmp_path):
    command = reproduce.row_command("cifar10-bc-stoch", "smoke", str(tmp_path), "/data")
    assert command[1:4] == ["cifar10.py", "--method", "bc-stoch"]
    assert command[-5:] == ["--data-dir", "/data/cifar10", "--out", str(tmp_path / "cifar10-bc-stoch"), "--resume"]


def test_without_data_dir_the_scripts_download():
    command = reproduce.row_command("mnist-float", "paper", "runs", None)
    assert "--data-dir" not in command


def test_default_jobs_follow_cores_and_memory():
    rows = list(reproduce.ROWS)
    assert reproduce.default_jobs(rows, "smoke", cores=2, gib=20) == 2
    assert reproduce.default_jobs(rows, "smoke", cores=16, gib=20) == 6      # 3 GiB per ConvNet row
    assert reproduce.default_jobs(rows, "paper", cores=16, gib=20) == 1      # full SVHN needs 16 GiB
    assert reproduce.default_jobs(["mnist-bnn"], "smoke", cores=16, gib=20) == 1


def test_thread_variables_cover_blas_and_openmp():
    assert reproduce.thread_env(3) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3"}


def test_job_script_is_requeue_safe(tmp_path):
    script = reproduce.job_script(str(tmp_path), "svhn-bnn", "short", "/data")
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=B:TERM@120" in script
    assert "svhn.py --method binarynet --no-extra --width 0.25" in script and "--resume" in script
    assert script.rstrip().endswith(f"reproduce.py --run-row svhn-bnn --runs {tmp_path} --budget short "
                                    "--data-dir /data")


def test_a_slurm_job_gets_one_thread_per_cpu(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "3")
    assert reproduce.slurm_threads() == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    assert reproduce.slurm_threads() == 8


def test_slurm_args_may_start_with_dashes():
    args = reproduce.parse_args(["--engine", "slurm", "--slurm-args", "--time=1:00 --cpus-per-task=2"])
    assert args.slurm_args == "--time=1:00 --cpus-per-task=2"


# ---------------------------------------------------------------------------------------------------------
# Skip, resume, refuse
# ---------------------------------------------------------------------------------------------------------
def write_row(runs, row, budget="paper", results=None, log=(), data_folder=None):
    """A hand-written row folder as reproduce.py leaves it."""
    reproduce.write_settings(str(runs), budget, None, [row])
    folder = os.path.join(str(runs), row)
    if data_folder is not None:
        settings = tables.read_json(os.path.join(folder, tables.RUN_SETTINGS))
        settings["data_folder"] = data_folder
        tables.write_text(os.path.join(folder, tables.RUN_SETTINGS), json.dumps(settings))
    if results is not None:
        tables.write_text(os.path.join(folder, "results.json"), json.dumps(results))
    tables.write_text(os.path.join(folder, "log.jsonl"), "".join(json.dumps(e) + "\n" for e in log))
    return folder


def results(test_error, epochs=10, done=10, official=True, **extra):
    identity = dict(label="official" if official else "other files", official=official, files=[])
    r = dict(dataset="mnist", method="bc-det", epochs=epochs, epochs_done=done, finished=done == epochs,
             best_epoch=done, best_val_error=test_error, val_error=test_error, test_error=test_error,
             test_loss=0.1, seconds=12.5, data_identity=identity, environment=dict(python="3.11"))
    r.update(extra)
    return r


def test_a_new_row_runs(tmp_path):
    settings = reproduce.row_settings("mnist-bnn", "smoke", str(tmp_path), None)
    assert reproduce.row_plan(str(tmp_path), "mnist-bnn", settings) == "run"


def test_a_finished_row_is_skipped(tmp_path):
    write_row(tmp_path, "mnist-bc-det", "smoke", results(5.0))
    settings = reproduce.row_settings("mnist-bc-det", "smoke", str(tmp_path), None)
    assert reproduce.row_plan(str(tmp_path), "mnist-bc-det", settings) == "skip"


def test_an_interrupted_row_runs_again(tmp_path):
    write_row(tmp_path, "mnist-bc-det", "smoke", results(5.0, epochs=10, done=4))
    settings = reproduce.row_settings("mnist-bc-det", "smoke", str(tmp_path), None)
    assert reproduce.row_plan(str(tmp_path), "mnist-bc-det", settings) == "run"


def test_a_row_made_with_other_flags_is_refused(tmp_path):
    write_row(tmp_path, "mnist-bc-det", "smoke", results(5.0, epochs=10, done=4))
    settings = reproduce.row_settings("mnist-bc-det", "short", str(tmp_path), None)
    with pytest.raises(UsageError, match="flags"):
        reproduce.row_plan(str(tmp_path), "mnist-bc-det", settings)


def test_a_run_reproduce_did_not_start_is_refused(tmp_path):
    os.makedirs(str(tmp_path / "mnist-bnn"))
    tables.write_text(str(tmp_path / "mnist-bnn" / "results.json"), json.dumps(results(1.0)))
    settings = reproduce.row_settings("mnist-bnn", "smoke", str(tmp_path), None)
    with pytest.raises(UsageError, match="did not start"):
        reproduce.row_plan(str(tmp_path), "mnist-bnn", settings)


def test_a_runs_folder_of_another_budget_is_refused(tmp_path):
    reproduce.write_settings(str(tmp_path), "smoke", None, [])
    reproduce.check_folder(str(tmp_path), "smoke", None)
    with pytest.raises(UsageError, match="budget smoke"):
        reproduce.check_folder(str(tmp_path), "short", None)


def test_a_data_dir_without_the_data_sets_folder_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no cifar10/ folder"):
        reproduce.check_data_dir(str(tmp_path), ["cifar10-bnn"])


def test_dry_run_prints_the_commands_and_writes_nothing(tmp_path, data_dir):
    runs = str(tmp_path / "runs")
    done = run_reproduce("--dry-run", "--budget", "tiny", "--only", "mnist-bnn,mnist-float", "--data-dir", data_dir,
                         "--runs", runs, "--jobs", "1")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "mnist.py" in line]
    assert len(lines) == 2
    assert f"OMP_NUM_THREADS={reproduce.cpu_count()}" in lines[0]
    assert lines[1].endswith(f"mnist.py --method float --units 16 --batch-size 50 --epochs 12 --data-dir "
                             f"{os.path.join(data_dir, 'mnist')} --out {os.path.join(runs, 'mnist-float')} --resume")
    assert not os.path.exists(runs)


# ---------------------------------------------------------------------------------------------------------
# The table builder on hand-written results
# ---------------------------------------------------------------------------------------------------------
def record(table, row):
    return next(r for r in table["rows"] if r["row"] == row)


def test_missing_rows_show_as_missing_never_zero(tmp_path):
    write_row(tmp_path, "mnist-bc-det", "paper", results(1.30, epochs=250, done=250))
    table = tables.build_table(str(tmp_path), list(reproduce.ROWS))
    missing = record(table, "svhn-float")
    assert missing["status"] == "missing" and missing["ours"] is None and missing["difference"] is None
    text = tables.markdown(table)
    line = next(line for line in text.splitlines() if line.startswith("| svhn-float |"))
    assert "| missing |" in line and "0.00" not in line
    assert "* **svhn-float**: missing" in text
    assert len(table["rows"]) == len(reproduce.ROWS)


def test_a_reduced_budget_says_so_in_the_title_and_is_not_compared(tmp_path):
    write_row(tmp_path, "mnist-bc-det", "smoke", results(1.30, epochs=2, done=2))
    table = tables.build_table(str(tmp_path), ["mnist-bc-det", "mnist-bnn"])
    assert table["title"].startswith("NOT a reproduction") and "reduced budget: smoke" in table["title"]
    r = record(table, "mnist-bc-det")
    assert r["within"] is None and r["comparable"] is False
    assert r["not_comparable_because"] == ["reduced budget (smoke)"]
    assert "2 epochs instead of 250 (LR decay recomputed to reach LR_fin in 2)" in r["reductions"]
    assert "not compared: reduced budget (smoke)" in tables.markdown(table)


def test_the_paper_budget_on_official_data_is_a_reproduction(tmp_path):
    write_row(tmp_path, "mnist-bc-det", "paper", results(1.30, epochs=250, done=250))
    table = tables.build_table(str(tmp_path), ["mnist-bc-det"])
    assert table["title"].startswith("Reproduction of the published")


@pytest.mark.parametrize("row, ours, within", [
    ("mnist-bc-det", 1.44, True), ("mnist-bc-det", 1.46, False),       # 1.29 +- 0.08: 2 sigma = 0.16
    ("mnist-bc-det", 1.14, True), ("mnist-bc-det", 1.12, False),
    ("cifar10-bnn", 12.50, True), ("cifar10-bnn", 12.60, False),       # 11.40, single run: 10 % = 1.14
    ("svhn-bc-stoch", 2.00, True), ("svhn-bc-stoch", 1.90, False),     # 2.15: 0.215
])
def test_spread_check(tmp_path, row, ours, within):
    write_row(tmp_path, row, "paper", results(ours, epochs=10, done=10))
    r = record(tables.build_table(str(tmp_path), [row]), row)
    assert r["comparable"] is True and r["within"] is within
    assert r["difference"] == pytest.approx(ours - published.cell(row).error)


def test_other_data_or_an_unfinished_run_is_not_compared(tmp_path):
    write_row(tmp_path, "mnist-bnn", "paper", results(0.96, official=False))
    write_row(tmp_path, "mnist-float", "paper", results(1.30, epochs=250, done=20))
    table = tables.build_table(str(tmp_path), ["mnist-bnn", "mnist-float"])
    assert record(table, "mnist-bnn")["not_comparable_because"] == ["not the official data"]
    assert record(table, "mnist-float")["not_comparable_because"] == ["run not finished"]
    assert record(table, "mnist-float")["epochs_done"] == 20 and record(table, "mnist-float")["epochs_planned"] == 250
    assert "not the official data sets" in table["title"]


def test_data_identity_tells_other_files_from_the_official_ones(tmp_path, monkeypatch):
    folder = str(tmp_path / "mnist")
    write_tiny_mnist(folder, 60, 10)
    other = tables.data_identity("mnist", folder)
    assert other["official"] is False and other["label"].startswith("not the official MNIST data set")
    assert len(other["files"]) == 4
    # The same files with their digests as the official table: now they count as official.
    fake = {key: (name, size, datasets.file_digest(os.path.join(folder, name + ".gz")))
            for key, (name, size, _) in datasets.MNIST_FILES.items()}
    monkeypatch.setattr(datasets, "MNIST_FILES", fake)
    assert tables.data_identity("mnist", folder)["label"] == "official MNIST files (MD5 verified)"


def test_data_label_is_shown_beside_the_verdict(tmp_path):
    folder = str(tmp_path / "mnist")
    write_tiny_mnist(folder, 60, 10)
    with open(os.path.join(folder, tables.DATA_LABEL), "w") as f:
        f.write("Fashion-MNIST\n")
    assert tables.data_identity("mnist", folder)["label"].endswith("(MD5 differs); described as: Fashion-MNIST")


def test_data_identity_reads_the_rows_data_folder(tmp_path):
    folder = str(tmp_path / "data" / "mnist")
    write_tiny_mnist(folder, 60, 10)
    write_row(tmp_path / "runs", "mnist-bnn", "smoke", dict(results(5.0), data_identity=None), data_folder=folder)
    r = record(tables.build_table(str(tmp_path / "runs"), ["mnist-bnn"]), "mnist-bnn")
    assert r["data"]["official"] is False and r["data"]["files"][0]["path"].startswith(folder)


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------
LOG = [dict(epoch=e, train_loss=1.0 / e, val_error=10.0 - e, test_error=11.0 - e, seconds=1.0) for e in (1, 2, 3)]


def test_learning_curves_have_loss_validation_test_and_published_lines():
    fig = tables.curve_figure("mnist-bnn", LOG, published.cell("mnist-bnn"))
    loss, errors = fig.axes[:2]
    assert len(loss.get_lines()) == 1
    assert len(errors.get_lines()) == 3
    assert list(errors.get_lines()[2].get_ydata()) == [0.96, 0.96]  # the published error, a horizontal line
    assert list(errors.get_lines()[0].get_ydata()) == [9.0, 8.0, 7.0]


def test_overview_marks_ours_only_where_a_run_exists(tmp_path):
    write_row(tmp_path, "mnist-bc-det", "smoke", results(1.5))
    write_row(tmp_path, "cifar10-bnn", "smoke", results(50.0))
    fig = tables.overview_figure(tables.build_table(str(tmp_path), list(reproduce.ROWS)))
    ours = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == "ours"]
    assert sorted(y for line in ours for y in line.get_ydata()) == [1.5, 50.0]


def test_write_report_writes_table_and_plots(tmp_path):
    write_row(tmp_path, "mnist-bc-det", "smoke", results(1.5), log=LOG)
    tables.write_report(str(tmp_path), list(reproduce.ROWS))
    for name in ("TABLE.md", "TABLE.json", "overview.png", os.path.join("curves", "mnist-bc-det.png")):
        assert os.path.getsize(str(tmp_path / name)) > 0
    assert not os.path.exists(str(tmp_path / "curves" / "mnist-bnn.png"))  # no log, no curve
    assert json.load(open(str(tmp_path / "TABLE.json")))["rows"][1]["ours"] == 1.5


# ---------------------------------------------------------------------------------------------------------
# The local engine, for real
# ---------------------------------------------------------------------------------------------------------
def test_local_engine_runs_two_rows_in_parallel_with_the_threads_split(tmp_path, data_dir):
    runs = str(tmp_path / "runs")
    done = run_reproduce("--budget", "tiny", "--only", "mnist-bnn,mnist-bc-det", "--data-dir", data_dir,
                         "--runs", runs, "--jobs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    threads = str(max(1, reproduce.cpu_count() // 2))
    attempts = {}
    for row in ("mnist-bnn", "mnist-bc-det"):
        r = json.load(open(os.path.join(runs, row, "results.json")))
        assert r["finished"] and r["epochs_done"] == TINY_EPOCHS
        assert len(tables.read_log(os.path.join(runs, row, "log.jsonl"))) == TINY_EPOCHS
        (attempts[row],) = [json.loads(line) for line in open(os.path.join(runs, row, "attempts.jsonl"))]
        assert attempts[row]["environment"] == {name: threads for name in reproduce.THREAD_VARIABLES}
        assert attempts[row]["returncode"] == 0
        assert os.path.exists(os.path.join(runs, "curves", row + ".png"))
    a, b = attempts["mnist-bnn"], attempts["mnist-bc-det"]
    assert a["started"] < b["ended"] and b["started"] < a["ended"]  # the two processes overlapped
    table = json.load(open(os.path.join(runs, "TABLE.json")))
    assert record(table, "mnist-bnn")["ours"] == json.load(open(os.path.join(runs, "mnist-bnn", "results.json")))[
        "test_error"]
    assert f"epoch {1}/{TINY_EPOCHS}" in done.stdout or "done: test" in done.stdout

    # Again: both rows are finished, so nothing runs and nothing changes.
    stamp = os.path.getmtime(os.path.join(runs, "mnist-bnn", "results.json"))
    again = run_reproduce("--budget", "tiny", "--only", "mnist-bnn,mnist-bc-det", "--data-dir", data_dir,
                          "--runs", runs)
    assert again.returncode == 0 and again.stdout.count("finished, skipped") == 2
    assert os.path.getmtime(os.path.join(runs, "mnist-bnn", "results.json")) == stamp

    # Other settings on the same folder: one line, exit status 2.
    other = run_reproduce("--budget", "smoke", "--only", "mnist-bnn", "--data-dir", data_dir, "--runs", runs)
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "budget tiny" in other.stderr


def wait_for(condition, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_an_interrupted_local_run_resumes_to_the_uninterrupted_numbers(tmp_path, slow_data_dir):
    common = ["--budget", "tiny", "--only", "mnist-bnn", "--data-dir", slow_data_dir, "--jobs", "1"]
    reference = run_reproduce(*(common + ["--runs", str(tmp_path / "reference")]))
    assert reference.returncode == 0, reference.stdout + reference.stderr

    runs = str(tmp_path / "runs")
    log = os.path.join(runs, "mnist-bnn", "log.jsonl")
    proc = subprocess.Popen([sys.executable, "reproduce.py"] + common + ["--runs", runs], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: epochs_committed(os.path.join(runs, "mnist-bnn")) >= 1, 600, "the first epoch")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    stopped = json.load(open(os.path.join(runs, "mnist-bnn", "results.json")))
    assert 1 <= stopped["epochs_done"] < TINY_EPOCHS and not stopped["finished"], "the run was not interrupted"

    resumed = run_reproduce(*(common + ["--runs", runs]))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming after epoch {stopped['epochs_done']}" in open(
        os.path.join(runs, "mnist-bnn", "run.log")).read()
    assert log_values(log) == log_values(os.path.join(str(tmp_path / "reference"), "mnist-bnn", "log.jsonl"))


def test_status_names_a_local_run_that_is_alive(tmp_path):
    folder = write_row(tmp_path, "mnist-bnn", "smoke", results(5.0, epochs=10, done=3), log=LOG)
    tables.write_text(os.path.join(folder, reproduce.RUNNING), json.dumps(dict(pid=os.getpid(),
                                                                           hostname=reproduce.platform.node())))
    assert reproduce.row_status(str(tmp_path), "mnist-bnn").startswith(f"running (pid {os.getpid()}), epoch")


def test_status_of_a_failed_local_run_shows_its_last_log_line(tmp_path):
    folder = write_row(tmp_path, "mnist-bnn", "smoke")
    reproduce.append_jsonl(os.path.join(folder, "attempts.jsonl"), dict(returncode=2))
    with open(os.path.join(folder, "run.log"), "w") as f:
        f.write("Loading MNIST dataset...\nerror: MNIST files missing in /x\n")
    assert reproduce.row_status(str(tmp_path), "mnist-bnn") == \
        "failed (exit 2), no finished epoch yet; last log line: error: MNIST files missing in /x"


def test_report_and_tables_commands_rebuild_the_report(tmp_path, capsys):
    write_row(tmp_path, "mnist-bc-det", "smoke", results(1.5), log=LOG)
    assert reproduce.main(["--report", "--runs", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("# NOT a reproduction of the papers")
    os.remove(str(tmp_path / "TABLE.md"))
    assert tables.main([str(tmp_path)]) == 0
    assert os.path.exists(str(tmp_path / "TABLE.md"))


def test_report_refuses_a_folder_reproduce_did_not_make(tmp_path):
    with pytest.raises(UsageError, match="not a runs folder made by reproduce.py"):
        reproduce.main(["--report", "--runs", str(tmp_path)])


def test_stand_in_data_is_in_the_official_formats(tmp_path):
    done = subprocess.run([sys.executable, "scripts/stand_in_data.py", str(tmp_path), "--small"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    x_train, y_train, x_test, y_test = datasets.load_cifar10_raw(str(tmp_path / "cifar10"))
    assert x_train.shape == (5000, 3, 32, 32) and x_test.shape == (1000, 3, 32, 32)
    svhn = datasets.load_svhn_raw(str(tmp_path / "svhn"), use_extra=False)
    assert svhn["valid"][0].shape == (4000, 3, 32, 32) and svhn["train"][0].shape == (2000, 3, 32, 32)
    assert datasets.load_mnist("pm1", str(tmp_path / "mnist"))["X_test"].shape == (1000, 1, 28, 28)
    for dataset in ("mnist", "cifar10", "svhn"):
        identity = tables.data_identity(dataset, str(tmp_path / dataset))
        assert identity["official"] is False and "random-pixel stand-in" in identity["label"]


def test_cpu_seconds_reads_this_process():
    spent = reproduce.cpu_seconds(os.getpid())
    sum(i * i for i in range(200000))
    assert 0 < spent <= reproduce.cpu_seconds(os.getpid())
    assert reproduce.cpu_seconds(2 ** 22 + 12345) is None


def test_wall_and_cpu_time_add_up_over_attempts(tmp_path):
    folder = write_row(tmp_path, "mnist-bnn", "smoke", results(5.0), log=LOG)
    reproduce.append_jsonl(os.path.join(folder, "attempts.jsonl"), dict(started=10, ended=70, cpu_seconds=50.0,
                                                                         returncode=130))
    reproduce.append_jsonl(os.path.join(folder, "attempts.jsonl"), dict(started=100, ended=130, cpu_seconds=25.5,
                                                                         returncode=0))
    r = record(tables.build_table(str(tmp_path), ["mnist-bnn"]), "mnist-bnn")
    assert (r["wall_seconds"], r["cpu_seconds"], r["processes"]) == (90, 75.5, 2)
    assert "wall time 1m30s over 2 process(es), CPU time 1m16s" in tables.markdown(
        tables.build_table(str(tmp_path), ["mnist-bnn"]))


def test_a_paper_table_with_an_unfinished_row_says_so(tmp_path):
    write_row(tmp_path, "mnist-bc-det", "paper", results(1.30, epochs=250, done=250))
    write_row(tmp_path, "mnist-float", "paper", results(1.30, epochs=250, done=20))
    assert tables.build_table(str(tmp_path), ["mnist-bc-det", "mnist-float"])["title"].endswith(
        "official data; 1 row(s) still running or interrupted)")


def test_a_folder_without_results_has_no_results_yet(tmp_path):
    reproduce.write_settings(str(tmp_path), "short", None, ["mnist-bnn"])
    assert tables.build_table(str(tmp_path), ["mnist-bnn"])["title"].startswith("No results yet (budget short)")


def test_cpu_per_epoch_is_the_median_step_between_consecutive_epochs():
    samples = [dict(epoch=1, cpu_seconds=50.0, pid=7), dict(epoch=2, cpu_seconds=60.0, pid=7),
               dict(epoch=3, cpu_seconds=72.0, pid=7),
               dict(epoch=5, cpu_seconds=100.0, pid=7),   # a missed epoch: no step
               dict(epoch=6, cpu_seconds=120.0, pid=8),   # a new process (resumed run): no step
               dict(epoch=7, cpu_seconds=131.0, pid=8)]
    assert tables.cpu_per_epoch(samples) == 11.0   # steps 10, 12, 11
    assert tables.cpu_per_epoch(samples[:1]) is None
