"""Print the papers' result tables with this archive's runs beside the published numbers.

    python tables.py runs/*            # every folder holding a results.json
    python tables.py runs/* --markdown

One row per run: data set, method, epochs done / planned, training rows, best-validation epoch, validation and
test error at that epoch, and the published test error ([BC] Table 2, [BNN] Table 1; ORIGINALS.md §5).
"""
import json
import os
import sys

from plumbing import cli

COLUMNS = ("dataset", "method", "epochs", "train rows", "best epoch", "val error %", "test error %", "paper %")


def read_run(folder):
    path = os.path.join(folder, "results.json")
    with open(path) as f:
        r = json.load(f)
    return (r["dataset"], r["method"], "{}/{}".format(r["epochs_done"], r["epochs"]), str(r["train_size"]),
            str(r["best_epoch"]), _pct(r["best_val_error"]), _pct(r["test_error"]), _pct(r["paper_test_error"]))


def _pct(value):
    return "-" if value is None else "{:.2f}".format(value)


def format_table(rows, markdown=False):
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(x)) for x in column) for column in zip(COLUMNS, *rows)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in [COLUMNS] + list(rows))


def main(argv=None):
    p = cli.Parser(__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="run folders (the --out of mnist.py, cifar10.py, svhn.py)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args(argv)
    rows, problems = [], []
    for folder in args.folders:
        try:
            rows.append(read_run(folder))
        except (OSError, ValueError, KeyError) as e:
            problems.append("{}: no readable results.json ({})".format(folder, e.__class__.__name__))
    rows.sort()
    if rows:
        print(format_table(rows, args.markdown))
    for problem in problems:
        sys.stderr.write("skipped " + problem + "\n")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(cli.main_guard(main))
