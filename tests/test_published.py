"""published.py holds the papers' numbers: checked cell by cell against the tables as the specification gives
them (typed here a second time, as Markdown), against the experiment scripts, and the agreement rule by hand."""
import re

import pytest

import cifar10
import convnet
import mnist
import published
import reproduce
import svhn

# [BC] Table 2 (NIPS version) and [BNN] Table 1, as docs/ORIGINALS.md §5 gives them; "—" = no entry.
BC_TABLE_2 = """
| Method | MNIST | CIFAR-10 | SVHN |
| No regularizer | 1.30 ± 0.04 % | 10.64 % | 2.44 % |
| BinaryConnect (det.) | 1.29 ± 0.08 % | 9.90 % | 2.30 % |
| BinaryConnect (stoch.) | 1.18 ± 0.04 % | 8.27 % | 2.15 % |
| 50% Dropout | 1.01 ± 0.04 % | — | — |
| Maxout Networks | 0.94 % | 11.68 % | 2.47 % |
| Deep L2-SVM | 0.87 % | — | — |
| Network in Network | — | 10.41 % | 2.35 % |
| DropConnect | — | — | 1.94 % |
| Deeply-Supervised Nets | — | 9.78 % | 1.92 % |
"""
BNN_TABLE_1 = """
| Method | MNIST | SVHN | CIFAR-10 |
| BNN (Torch7) | 1.40 % | 2.53 % | 10.15 % |
| BNN (Theano) | 0.96 % | 2.80 % | 11.40 % |
| Committee Machines' Array | 1.35 % | — | — |
| BinaryConnect | 1.29 ± 0.08 % | 2.30 % | 9.90 % |
| EBP | 2.2 ± 0.1 % | — | — |
| Bitwise DNNs | 1.33 % | — | — |
| Ternary weights, binary activations (Hwang & Sung) | 1.45 % | — | — |
| Maxout Networks | 0.94 % | 2.47 % | 11.68 % |
| Network in Network | — | 2.35 % | 10.41 % |
| Gated pooling | — | 1.69 % | 7.62 % |
"""
COLUMNS = {"MNIST": "mnist", "CIFAR-10": "cifar10", "SVHN": "svhn"}


def parse(markdown):
    """{(method, dataset): (error, spread)} from one of the tables above."""
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in markdown.strip().splitlines()]
    header, cells = lines[0], {}
    for row in lines[1:]:
        for column, text in zip(header[1:], row[1:]):
            if text == "—":
                continue
            m = re.fullmatch(r"([\d.]+)(?: ± ([\d.]+))? %", text)
            cells[(row[0], COLUMNS[column])] = (float(m.group(1)), m.group(2) and float(m.group(2)))
    return cells


def published_cells(table):
    return {(c.method, c.dataset): (c.error, c.spread) for c in published.CELLS if c.source[1] == table}


def test_bc_table_2_equals_the_spec():
    assert published_cells(published.BC_TABLE) == parse(BC_TABLE_2)


def test_bnn_table_1_equals_the_spec():
    assert published_cells(published.BNN_TABLE) == parse(BNN_TABLE_1)


def test_every_cell_names_paper_table_and_column():
    for c in published.CELLS:
        paper, table, page, column = c.source
        assert paper in (published.BC, published.BNN) and table in (published.BC_TABLE, published.BNN_TABLE)
        assert column == c.dataset and page is None


def test_every_reproduce_row_has_its_cell_on_the_rows_data_set():
    for row, (dataset, method) in reproduce.ROWS.items():
        cell = published.cell(row)
        assert cell is not None and cell.dataset == dataset, row


def test_rows_waiting_for_their_method_already_have_the_torch7_column():
    assert {r: published.cell(r).error for r in ("mnist-bnn-torch7", "svhn-bnn-torch7", "cifar10-bnn-torch7")} == \
        {"mnist-bnn-torch7": 1.40, "svhn-bnn-torch7": 2.53, "cifar10-bnn-torch7": 10.15}


@pytest.mark.parametrize("module", [mnist, cifar10, svhn])
def test_the_scripts_paper_errors_equal_published(module):
    dataset = module.__name__
    names = {"binarynet": "bnn", "bc-det": "bc-det", "bc-stoch": "bc-stoch", "float": "float",
             "binarynet-torch7": "bnn-torch7"}
    for method, error in module.PAPER_TEST_ERROR.items():
        assert published.cell(f"{dataset}-{names[method]}").error == error


def test_original_schedules_equal_the_scripts_tables():
    s = published.ORIGINAL_SCHEDULES
    assert s[("mnist", "binarynet")]["epochs"] == mnist.BINARYNET["num_epochs"] == 1000
    assert s[("mnist", "binarynet")]["units"] == mnist.BINARYNET["num_units"] == 4096
    assert s[("mnist", "binaryconnect")]["epochs"] == mnist.BINARYCONNECT["num_epochs"] == 250
    assert s[("mnist", "binaryconnect")]["units"] == mnist.BINARYCONNECT["num_units"] == 2048
    for family, table in (("binarynet", cifar10.BINARYNET), ("binaryconnect", cifar10.BINARYCONNECT)):
        assert s[("cifar10", family)]["epochs"] == table["num_epochs"] == 500
        assert s[("cifar10", family)]["train_rows"] == cifar10.TRAIN_SET_SIZE
        assert s[("cifar10", family)]["widths"] == convnet.CIFAR10_WIDTHS
    for family, table in (("binarynet", svhn.BINARYNET), ("binaryconnect", svhn.BINARYCONNECT)):
        assert s[("svhn", family)]["epochs"] == table["num_epochs"] == 200
        assert s[("svhn", family)]["widths"] == convnet.SVHN_WIDTHS
    for dataset, module in (("mnist", mnist), ("cifar10", cifar10), ("svhn", svhn)):
        torch7 = s[(dataset, "binarynet-torch7")]
        assert (torch7["epochs"], torch7["batch_size"]) == (module.TORCH7["num_epochs"], module.TORCH7["batch_size"])
        assert f"halved every {module.TORCH7['LR_halving_epochs']} epochs" in torch7["lr_rule"]
    assert s[("mnist", "binarynet-torch7")]["units"] == mnist.TORCH7["num_units"] == 2048


def test_readme_expectations_equal_the_spec():
    expected = {("BinaryConnect", "mnist.py"): 1.15, ("BinaryConnect", "cifar10.py"): 8.27,
                ("BinaryConnect", "svhn.py"): 2.15, ("BinaryNet/Train-time", "mnist.py"): 0.96,
                ("BinaryNet/Train-time", "cifar10.py"): 11.40, ("BinaryNet/Train-time", "svhn.py"): 2.80}
    for key, error in expected.items():
        assert published.README_EXPECTED[key]["error"] == error


def test_speedups_equal_the_spec():
    assert [s["ratio"] for s in published.SPEEDUPS[:3]] == [23, 3.4, 7]


def test_tolerance_is_two_sigma_with_a_published_spread():
    tol, rule = published.tolerance(published.cell("mnist-bc-det"))  # 1.29 +- 0.08 over 6 runs
    assert tol == pytest.approx(0.16) and "standard deviation" in rule


def test_tolerance_is_ten_percent_of_a_single_run():
    tol, rule = published.tolerance(published.cell("cifar10-bnn"))  # 11.40, one run
    assert tol == pytest.approx(1.14) and "single run" in rule
