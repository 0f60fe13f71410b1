"""The report of a runs folder made by reproduce.py: our test errors beside the published ones.

    python tables.py runs/smoke          # rebuild RUNS/TABLE.md, TABLE.json, curves/ROW.png, overview.png

reproduce.py writes the report after every finished epoch of any row and with --report; this module builds it.
Per row (a paper cell, published.py): published error (+- where the paper gives one), ours (test error at the
best validation epoch, as the originals report it), the difference, whether ours agrees (within 2 published
standard deviations, or within published.TOLERANCE_RELATIVE of a single published run), the budget and every
reduction, epochs done / planned, time, the data's identity, hardware and software. A row without a run is
"missing", never zero. Only a paper-budget row on the official data is compared; any other row says why not,
and a table holding one says so in its title.
"""
import json
import os
import platform
import sys
import time

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import published  # noqa: E402
from plumbing import cli, datasets  # noqa: E402
from plumbing.errors import RunError  # noqa: E402

RUN_SETTINGS = "reproduce.json"   # RUNS/reproduce.json (the folder) and RUNS/ROW/reproduce.json (one row)
HOST = "host.json"                # RUNS/ROW/host.json: the machine a row last ran on
ATTEMPTS = "attempts.jsonl"       # RUNS/ROW/attempts.jsonl: one line per local process (times, exit, CPU time)
EPOCH_CPU = "cpu.jsonl"           # RUNS/ROW/cpu.jsonl: the run's CPU time as each epoch ended
DATA_CACHE = "data_identity.json"  # RUNS/data_identity.json: digests of the data files, by path, size and mtime
TABLE_MD, TABLE_JSON = "TABLE.md", "TABLE.json"
DATA_LABEL = "DATA_LABEL.txt"     # optional first line describing a data folder (scripts/stand_in_data.py writes it)
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "svhn": "SVHN"}


# ---------------------------------------------------------------------------------------------------------
# Reading a runs folder
# ---------------------------------------------------------------------------------------------------------
def read_json(path, default=None):
    """A JSON file's content; `default` when it does not exist; RunError when it cannot be read."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {path} ({e}); delete it or restore it") from None


def read_log(path):
    """The epochs of a log.jsonl (one JSON object per finished epoch); a torn last line is left out."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    break
    except FileNotFoundError:
        pass
    return rows


def write_text(path, text):
    """Write a report file atomically (a reader never sees half a table)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def row_state(runs, row):
    """What the runs folder says about one row: settings, results, log, host (each None when absent)."""
    folder = os.path.join(runs, row)
    return dict(settings=read_json(os.path.join(folder, RUN_SETTINGS)),
                results=read_json(os.path.join(folder, "results.json")),
                log=read_log(os.path.join(folder, "log.jsonl")),
                host=read_json(os.path.join(folder, HOST)),
                attempts=read_log(os.path.join(folder, ATTEMPTS)),
                epoch_cpu=read_log(os.path.join(folder, EPOCH_CPU)))


# ---------------------------------------------------------------------------------------------------------
# Data identity: official files by MD5, or files in the official format that are not the official data set
# ---------------------------------------------------------------------------------------------------------
def _official_digests(dataset):
    """file name -> official MD5 (plumbing.datasets' tables, docs/ORIGINALS.md §3.5)."""
    if dataset == "mnist":
        return {name + ".gz": md5 for name, _, md5 in datasets.MNIST_FILES.values()}
    if dataset == "cifar10":
        digests = dict(datasets.CIFAR10_BATCH_MD5)
        digests[datasets.CIFAR10_TARBALL] = datasets.CIFAR10_MD5
        return digests
    return {name: md5 for name, _, md5 in datasets.SVHN_FILES.values()}


def _first(folders, names):
    for folder in folders:
        for name in names:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return None


def data_files(dataset, folder):
    """The data files a script would read for `dataset` from `folder` (the layouts plumbing.datasets accepts)."""
    if dataset == "mnist":
        folders = [folder, os.path.join(folder, "mnist")]
        found = [_first(folders, [name + ".gz", name]) for name, _, _ in datasets.MNIST_FILES.values()]
    elif dataset == "cifar10":
        batches = [os.path.join(folder, datasets.CIFAR10_FOLDER), os.path.join(folder, "cifar10",
                                                                             datasets.CIFAR10_FOLDER), folder]
        found = [_first(batches, [name]) for name in sorted(datasets.CIFAR10_BATCH_MD5)]
        if not any(found):
            found = [_first([folder, os.path.join(folder, "cifar10")], [datasets.CIFAR10_TARBALL])]
    else:
        folders = [folder, os.path.join(folder, "svhn"), os.path.join(folder, "SVHN", "format2")]
        found = [_first(folders, [name]) for name, _, _ in datasets.SVHN_FILES.values()]
    return sorted(path for path in found if path)


def data_identity(dataset, folder, cache=None):
    """{label, official, files: [{path, size, md5, official}]} for the files in `folder`.

    official: True when every file's MD5 equals the official one, False when one differs, None when no file was
    found or a file has no official MD5 to compare with (e.g. unpacked MNIST files; the official MD5s are of the
    .gz files). Digests are cached in `cache` (a dict keyed by real path, size and mtime).
    """
    name = DATASET_NAMES[dataset]
    files = []
    official = _official_digests(dataset)
    for path in data_files(dataset, folder) if folder and os.path.isdir(folder) else []:
        real = os.path.realpath(path)
        stat = os.stat(real)
        key = f"{real}|{stat.st_size}|{int(stat.st_mtime)}"
        if cache is not None and key in cache:
            md5 = cache[key]
        else:
            md5 = datasets.file_digest(real)
            if cache is not None:
                cache[key] = md5
        known = official.get(os.path.basename(path))
        files.append(dict(path=real, size=stat.st_size, md5=md5, official=None if known is None else known == md5))
    if not files:
        return dict(label=f"unknown: no {name} files in {folder}", official=None, files=[])
    if any(f["official"] is False for f in files):
        label, verdict = f"not the official {name} data set: files in the official {name} format (MD5 differs)", False
    elif all(f["official"] for f in files):
        label, verdict = f"official {name} files (MD5 verified)", True
    else:
        label, verdict = f"{name} files without an official MD5 to compare (unpacked?)", None
    description = data_label(folder)
    return dict(label=label + ("; described as: " + description if description else ""), official=verdict,
                description=description, files=files)


def data_label(folder):
    """The first line of FOLDER/DATA_LABEL.txt (what the files are, in the words of whoever put them there)."""
    try:
        with open(os.path.join(folder, DATA_LABEL), errors="replace") as f:
            return f.readline().strip()[:200]
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------------------
# One table row
# ---------------------------------------------------------------------------------------------------------
def _status(state):
    results, settings = state["results"], state["settings"]
    if results is None:
        return "missing" if settings is None else "started, no finished epoch"
    if results.get("finished"):
        return "finished"
    return f"epoch {results.get('epochs_done')}/{results.get('epochs')}"


def compare(cell, ours):
    """(difference in points, tolerance in points, rule text, within?) for a published cell and our error."""
    tol, rule = published.tolerance(cell)
    if ours is None:
        return None, tol, rule, None
    diff = ours - cell.error
    return diff, tol, rule, abs(diff) <= tol + 1e-9


def cpu_per_epoch(samples):
    """Median CPU seconds between consecutive epochs of one process (pairs of samples one epoch apart)."""
    steps = sorted(b["cpu_seconds"] - a["cpu_seconds"] for a, b in zip(samples, samples[1:])
                   if b["epoch"] == a["epoch"] + 1 and b.get("pid") == a.get("pid"))
    if not steps:
        return None
    middle = len(steps) // 2
    return steps[middle] if len(steps) % 2 else (steps[middle - 1] + steps[middle]) / 2


def _total_cpu(attempts):
    """CPU seconds of a row's processes over all attempts (None unless every attempt measured it)."""
    values = [a.get("cpu_seconds") for a in attempts]
    return round(sum(values), 1) if values and None not in values else None


def table_row(row, state, data):
    """The report's record of one row (TABLE.json); `data` is the data identity of the row's files."""
    cell = published.cell(row)
    results, settings, log = state["results"], state["settings"] or {}, state["log"]
    ours = results.get("test_error") if results else None
    diff, tol, rule, within = compare(cell, ours) if cell else (None, None, None, None)
    budget = settings.get("budget")
    reasons = []
    if budget != "paper":
        reasons.append(f"reduced budget ({budget or 'unknown'})")
    if data.get("official") is not True:
        reasons.append("not the official data")
    if results is not None and not results.get("finished"):
        reasons.append("run not finished")
    comparable = results is not None and not reasons
    record = dict(
        row=row, status=_status(state),
        published=None if cell is None else dict(
            error=cell.error, spread=cell.spread, runs=cell.runs, method=cell.method, dataset=cell.dataset,
            source=published.source_text(cell), short_source=published.short_source(cell), note=cell.note),
        ours=ours, best_val_error=results.get("best_val_error") if results else None,
        best_epoch=results.get("best_epoch") if results else None,
        difference=diff, tolerance=tol, tolerance_rule=rule,
        within=within if comparable else None, comparable=comparable,
        not_comparable_because=reasons if results is not None else ["missing"],
        budget=budget, flags=settings.get("flags", []), reductions=settings.get("reductions", []),
        epochs_done=results.get("epochs_done") if results else len(log) or None,
        epochs_planned=results.get("epochs") if results else settings.get("epochs"),
        seconds=results.get("seconds") if results else None,
        wall_seconds=sum(a["ended"] - a["started"] for a in state["attempts"]) if state["attempts"] else None,
        cpu_seconds=_total_cpu(state["attempts"]), processes=len(state["attempts"]),
        cpu_per_epoch=cpu_per_epoch(state["epoch_cpu"]),
        data=data, environment=results.get("environment") if results else None, host=state["host"],
        command=settings.get("command"))
    return record


# ---------------------------------------------------------------------------------------------------------
# The whole report
# ---------------------------------------------------------------------------------------------------------
def title(budgets, all_official, unfinished=0, ran=1):
    """The table's title; anything but the paper budget on official data says it is not a reproduction."""
    budgets = sorted(b for b in budgets if b)
    budget_list = ", ".join(budgets) or "unknown"
    if not ran:
        return f"No results yet (budget {budget_list}): the published test errors"
    if budgets == ["paper"] and all_official:
        still_running = f"; {unfinished} row(s) still running or interrupted" if unfinished else ""
        return f"Reproduction of the published test errors (paper schedules, official data{still_running})"
    parts = []
    if budgets != ["paper"]:
        parts.append(f"reduced budget: {budget_list}")
    if not all_official:
        parts.append("not the official data sets")
    return f"NOT a reproduction of the papers ({'; '.join(parts)}): published test errors beside this archive's runs"


def build_table(runs, rows, folder_settings=None, data_cache=None):
    """TABLE.json's content for `rows` of the runs folder `runs`."""
    folder_settings = folder_settings or read_json(os.path.join(runs, RUN_SETTINGS), {}) or {}
    records = []
    for row in rows:
        state = row_state(runs, row)
        settings = state["settings"]
        data = (state["results"] or {}).get("data_identity")
        if settings is None:
            data = dict(label="—", official=None, files=[])
        elif not isinstance(data, dict) or "label" not in data:
            data = data_identity(settings["dataset"], settings["data_folder"], data_cache)
        records.append(table_row(row, state, data))
    ran = [r for r in records if r["ours"] is not None]
    budgets = {r["budget"] for r in ran} or {folder_settings.get("budget")}
    all_official = bool(ran) and all(r["data"].get("official") is True for r in ran)
    unfinished = sum(1 for r in ran if r["status"] != "finished")
    return dict(title=title(budgets, all_official, unfinished, len(ran)), generated=time.strftime("%Y-%m-%d %H:%M:%S"),
                budget=folder_settings.get("budget"), runs=os.path.abspath(runs), rows=records,
                report_host=dict(hostname=platform.node(), python=platform.python_version()))


def _pct(value, spread=None):
    if value is None:
        return "missing"
    return f"{value:.2f}" if spread is None else f"{value:.2f} ± {spread:.2f}"


def _verdict(r):
    if r["ours"] is None:
        return "—"
    if not r["comparable"]:
        return "not compared: " + ", ".join(r["not_comparable_because"])
    return ("yes" if r["within"] else "no") + f" (±{r['tolerance']:.2f})"


def _duration(seconds):
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def short_data(data):
    """The data column of TABLE.md: the MD5 verdict in a few words (the full label is below the table)."""
    if data.get("official") is True:
        return "official (MD5 verified)"
    if data.get("official") is False:
        return "NOT the official data" + (": " + data["description"] if data.get("description") else "")
    return "—" if data.get("label") == "—" else "unknown"


def markdown(table):
    """TABLE.md: the comparison, then per row what was run and on what."""
    out = ["# " + table["title"], "",
           f"Runs folder `{table['runs']}`, written {table['generated']}. Errors in percent: test error at the best "
           "validation epoch.", "",
           "| row | paper cell | published | ours | difference | agrees | budget | epochs | time: epochs / wall / CPU "
           "| data |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table["rows"]:
        p = r["published"]
        cell = "—" if p is None else f"{p['short_source']}: {DATASET_NAMES.get(p['dataset'])}, {p['method']}"
        epochs = "—" if r["epochs_done"] is None else f"{r['epochs_done']}/{r['epochs_planned']}"
        diff = "—" if r["difference"] is None else f"{r['difference']:+.2f}"
        published_error = _pct(p and p["error"], p and p["spread"]) if p else "—"
        times = " / ".join(_duration(r[k]) for k in ("seconds", "wall_seconds", "cpu_seconds"))
        out.append(f"| {r['row']} | {cell} | {published_error} | {_pct(r['ours'])} | {diff} | {_verdict(r)} | "
                   f"{r['budget'] or '—'} | {epochs} | {times} | {short_data(r['data'])} |")
    out += ["", f"Agreement rule: within {published.SIGMAS} published standard deviations where the paper gives mean "
            f"± std (6 runs), else within {100 * published.TOLERANCE_RELATIVE:.0f} % of the published error. Only "
            "paper-budget runs on the official data are compared. Time: the epochs' training and evaluation; the "
            "wall time of the run's processes (with compilation and data loading); their CPU time (one thread each: "
            "about the wall time on a quiet machine).", ""]
    out += ["## What each row ran", ""]
    for r in table["rows"]:
        if r["command"] is None:
            out.append(f"* **{r['row']}**: missing (no run in this folder)")
            continue
        env, host = r["environment"] or {}, r["host"] or {}
        out.append(f"* **{r['row']}** ({r['status']}): `{' '.join(r['command'])}`")
        out.append(f"  * budget {r['budget']}; reductions: {'; '.join(r['reductions']) or 'none'}")
        if r["wall_seconds"] is not None:
            cpu_time = ("" if r["cpu_seconds"] is None
                        else f", CPU time {_duration(r['cpu_seconds'])} (compilation by g++ not counted)")
            per_epoch = "" if r["cpu_per_epoch"] is None else f", {_duration(r['cpu_per_epoch'])} CPU per epoch"
            out.append(f"  * wall time {_duration(r['wall_seconds'])} over {r['processes']} process(es)"
                       f"{cpu_time}{per_epoch}")
        if r["best_epoch"] is not None:
            out.append(f"  * best validation error {_pct(r['best_val_error'])} at epoch {r['best_epoch']}")
        out.append(f"  * data: {r['data']['label']}")
        for f in r["data"].get("files", []):
            official = " (official)" if f["official"] else ""
            out.append(f"    * `{f['path']}` {f['size']} bytes, MD5 {f['md5']}{official}")
        if host:
            out.append(f"  * hardware: {host.get('cpu')} ({host.get('hostname')}), {host.get('cpus')} CPUs, "
                       f"{host.get('memory_gib')} GiB, {host.get('threads')} threads per run; load average "
                       f"{host.get('load_average')} at the start")
        if env:
            out.append("  * software: " + ", ".join(f"{k} {v}" for k, v in sorted(env.items())))
        if r["published"] and r["published"]["note"]:
            out.append("  * note: " + r["published"]["note"])
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------
def curve_figure(row, log, cell):
    """Training loss (left) and validation / test error (right) per epoch; the published error as a line.

    The test error is the one at the best validation epoch so far (the originals evaluate the test set only
    when the validation error improves), so it is a step curve.
    """
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [e["epoch"] for e in log]
    ax_loss.plot(epochs, [e["train_loss"] for e in log], "o-", ms=3, label="training loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("squared hinge loss")
    ax_loss.set_title(row + ": training loss")
    ax_err.plot(epochs, [e["val_error"] for e in log], "o-", ms=3, label="validation error")
    ax_err.step(epochs, [e["test_error"] for e in log], where="post", label="test error at best validation epoch")
    if cell is not None:
        ax_err.axhline(cell.error, color="k", ls="--", lw=1,
                       label=f"published {cell.error:.2f} % ({cell.method})")
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("error (%)")
    ax_err.set_title(row + ": error")
    ax_err.legend(fontsize=7)
    fig.tight_layout()
    return fig


def overview_figure(table):
    """Published (with the spread or tolerance as an error bar) vs ours for every row, one panel per data set."""
    by_dataset = {}
    for r in table["rows"]:
        if r["published"]:
            by_dataset.setdefault(r["published"]["dataset"], []).append(r)
    fig, axes = plt.subplots(1, max(1, len(by_dataset)), figsize=(4.5 * max(1, len(by_dataset)), 3.8), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], by_dataset.items()):
        xs = range(len(rows))
        ax.errorbar(xs, [r["published"]["error"] for r in rows], yerr=[r["tolerance"] for r in rows], fmt="s",
                    color="k", capsize=4, label="published (bar: agreement band)")
        ours = [(x, r["ours"]) for x, r in zip(xs, rows) if r["ours"] is not None]
        if ours:
            ax.plot([x for x, _ in ours], [y for _, y in ours], "o", color="C3", label="ours")
        for x, r in zip(xs, rows):
            if r["ours"] is None:
                ax.annotate("missing", (x, r["published"]["error"]), textcoords="offset points", xytext=(0, 12),
                            ha="center", fontsize=7, color="C3")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([r["row"].split("-", 1)[1] for r in rows], rotation=30, fontsize=8)
        ax.set_title(DATASET_NAMES.get(dataset, dataset))
        ax.set_ylabel("test error (%)")
        ax.legend(fontsize=7)
    fig.suptitle(table["title"], fontsize=8)
    fig.tight_layout()
    return fig


def save(fig, path):
    tmp = f"{path[:-4]}.{os.getpid()}.tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(runs, rows, curves_for=None):
    """Write TABLE.md, TABLE.json, curves/ROW.png (for `curves_for`, default every row with a log) and
    overview.png into the runs folder; returns the table."""
    cache_path = os.path.join(runs, DATA_CACHE)
    cache = read_json(cache_path, {}) or {}
    table = build_table(runs, rows, data_cache=cache)
    write_text(cache_path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    write_text(os.path.join(runs, TABLE_JSON), json.dumps(table, indent=2) + "\n")
    write_text(os.path.join(runs, TABLE_MD), markdown(table))
    os.makedirs(os.path.join(runs, "curves"), exist_ok=True)
    for row in rows if curves_for is None else curves_for:
        log = read_log(os.path.join(runs, row, "log.jsonl"))
        if log:
            save(curve_figure(row, log, published.cell(row)), os.path.join(runs, "curves", row + ".png"))
    save(overview_figure(table), os.path.join(runs, "overview.png"))
    return table


def main(argv=None):
    p = cli.Parser(__doc__.splitlines()[0])
    p.add_argument("runs", help="a runs folder made by reproduce.py (holds reproduce.json)")
    args = p.parse_args(argv)
    settings = read_json(os.path.join(args.runs, RUN_SETTINGS))
    if settings is None:
        raise RunError(f"{args.runs} holds no {RUN_SETTINGS}; it was not made by reproduce.py (run `python "
                       f"reproduce.py --runs {args.runs} --report`)")
    table = write_report(args.runs, settings["rows"])
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(cli.main_guard(main))
