"""The papers' published numbers as data, every one with its source (docs/reproduce.md, docs/ORIGINALS.md §5).

    [BC]  Courbariaux, Bengio, David. BinaryConnect: Training Deep Neural Networks with binary weights during
          propagations. NIPS 2015, arXiv:1511.00363.
    [BNN] Courbariaux, Hubara, Soudry, El-Yaniv, Bengio. Binarized Neural Networks: Training Deep Neural Networks
          with Weights and Activations Constrained to +1 or -1. arXiv:1602.02830 (v3, NIPS 2016).

CELLS holds every cell of [BC] Table 2 and [BNN] Table 1 (test error in percent, the +- where the paper gives
one). A cell that this archive can rerun has a `row` name (the rows of reproduce.py); the other cells (other
authors' methods) have row None and are kept for completeness. Page numbers are not recorded: the papers were
not available in full when the specification was written (docs/ORIGINALS.md §0), so `page` is None throughout.
Cells the specification marks "(verify)" (the rows quoting other papers) have verify=True.
"""
from collections import OrderedDict, namedtuple

BC = "[BC] BinaryConnect, NIPS 2015 (arXiv:1511.00363)"
BNN = "[BNN] Binarized Neural Networks, arXiv:1602.02830 v3 (NIPS 2016)"
BC_TABLE = "Table 2 (NIPS version)"
BNN_TABLE = "Table 1"

# One published test error. error and spread in percent; runs: how many runs the number summarizes (None: not
# stated, taken as one run); source: (paper, table, page, column).
Cell = namedtuple("Cell", "row dataset method error spread runs source verify note")


def _bc(row, dataset, method, error, spread=None, runs=None, verify=False, note=""):
    return Cell(row, dataset, method, error, spread, runs, (BC, BC_TABLE, None, dataset), verify, note)


def _bnn(row, dataset, method, error, spread=None, runs=None, verify=False, note=""):
    return Cell(row, dataset, method, error, spread, runs, (BNN, BNN_TABLE, None, dataset), verify, note)


MNIST_RUNS = "mean +- standard deviation over 6 runs with different initializations ([BC] Table 2)"
BC_MNIST_NOTE = ("the paper's MNIST MLP (3 x 1024, SGD, 1000 epochs) came from deleted pre-Lasagne code; mnist.py "
                 "runs the released script (3 x 2048, Adam, 250 epochs), whose README expects about 1.15 %")

CELLS = [
    # [BC] Table 2: test error of permutation-invariant MNIST (MLP), CIFAR-10 (no augmentation) and SVHN.
    _bc("mnist-float", "mnist", "No regularizer", 1.30, 0.04, 6, note=BC_MNIST_NOTE),
    _bc("cifar10-float", "cifar10", "No regularizer", 10.64),
    _bc("svhn-float", "svhn", "No regularizer", 2.44),
    _bc("mnist-bc-det", "mnist", "BinaryConnect (det.)", 1.29, 0.08, 6, note=BC_MNIST_NOTE),
    _bc("cifar10-bc-det", "cifar10", "BinaryConnect (det.)", 9.90),
    _bc("svhn-bc-det", "svhn", "BinaryConnect (det.)", 2.30),
    _bc("mnist-bc-stoch", "mnist", "BinaryConnect (stoch.)", 1.18, 0.04, 6, note=BC_MNIST_NOTE),
    _bc("cifar10-bc-stoch", "cifar10", "BinaryConnect (stoch.)", 8.27),
    _bc("svhn-bc-stoch", "svhn", "BinaryConnect (stoch.)", 2.15),
    _bc(None, "mnist", "50% Dropout", 1.01, 0.04, 6),
    _bc(None, "mnist", "Maxout Networks", 0.94, verify=True),
    _bc(None, "cifar10", "Maxout Networks", 11.68, verify=True),
    _bc(None, "svhn", "Maxout Networks", 2.47, verify=True),
    _bc(None, "mnist", "Deep L2-SVM", 0.87, verify=True),
    _bc(None, "cifar10", "Network in Network", 10.41, verify=True),
    _bc(None, "svhn", "Network in Network", 2.35, verify=True),
    _bc(None, "svhn", "DropConnect", 1.94, verify=True),
    _bc(None, "cifar10", "Deeply-Supervised Nets", 9.78, verify=True),
    _bc(None, "svhn", "Deeply-Supervised Nets", 1.92, verify=True),
    # [BNN] Table 1: binarized activations and weights during training and test.
    _bnn("mnist-bnn-torch7", "mnist", "BNN (Torch7)", 1.40,
         note="Torch7 code: stochastic activations, shift-based BN and AdaMax; epochs used not recorded"),
    _bnn("svhn-bnn-torch7", "svhn", "BNN (Torch7)", 2.53,
         note="Torch7 code: stochastic activations, shift-based BN and AdaMax; epochs used not recorded"),
    _bnn("cifar10-bnn-torch7", "cifar10", "BNN (Torch7)", 10.15,
         note="Torch7 code: stochastic activations, shift-based BN and AdaMax; epochs used not recorded"),
    _bnn("mnist-bnn", "mnist", "BNN (Theano)", 0.96),
    _bnn("svhn-bnn", "svhn", "BNN (Theano)", 2.80),
    _bnn("cifar10-bnn", "cifar10", "BNN (Theano)", 11.40),
    _bnn(None, "mnist", "Committee Machines' Array", 1.35, verify=True),
    _bnn(None, "mnist", "BinaryConnect", 1.29, 0.08, 6, note="quotes [BC] Table 2, deterministic"),
    _bnn(None, "svhn", "BinaryConnect", 2.30, note="quotes [BC] Table 2, deterministic"),
    _bnn(None, "cifar10", "BinaryConnect", 9.90, note="quotes [BC] Table 2, deterministic"),
    _bnn(None, "mnist", "EBP", 2.2, 0.1, verify=True),
    _bnn(None, "mnist", "Bitwise DNNs", 1.33, verify=True),
    _bnn(None, "mnist", "Ternary weights, binary activations (Hwang & Sung)", 1.45, verify=True),
    _bnn(None, "mnist", "Maxout Networks", 0.94, verify=True),
    _bnn(None, "svhn", "Maxout Networks", 2.47, verify=True),
    _bnn(None, "cifar10", "Maxout Networks", 11.68, verify=True),
    _bnn(None, "svhn", "Network in Network", 2.35, verify=True),
    _bnn(None, "cifar10", "Network in Network", 10.41, verify=True),
    _bnn(None, "svhn", "Gated pooling", 1.69, verify=True),
    _bnn(None, "cifar10", "Gated pooling", 7.62, verify=True),
]

# The cells this archive reruns, by row name (reproduce.py's rows).
BY_ROW = OrderedDict((cell.row, cell) for cell in CELLS if cell.row)

# A single published run has no spread; ours counts as agreeing when it is within this fraction of the published
# error (10 %: 0.96 +- 0.10 on MNIST, 11.40 +- 1.14 on CIFAR-10). With a published +- (6 runs): within 2 sigma.
TOLERANCE_RELATIVE = 0.10
SIGMAS = 2

# The released scripts' READMEs: expected test error (%) and training time on the authors' GPUs
# (docs/ORIGINALS.md §2.1). Key: (repository, script).
README_EXPECTED = OrderedDict([
    (("BinaryConnect", "mnist.py"), dict(error=1.15, time="about 30 min", gpu="GTX 680",
                                         note="README: not the experiment reported in the article")),
    (("BinaryConnect", "cifar10.py"), dict(error=8.27, time="about 20 h", gpu="Titan Black", note="")),
    (("BinaryConnect", "svhn.py"), dict(error=2.15, time="about 2 days", gpu="Titan Black", note="")),
    (("BinaryConnect test_time branch", "mnist.py"), dict(error=1.12, time="about 20 min", gpu="GTX 680",
                                                          note="deterministic BC, 3 x 1280 units")),
    (("BinaryNet/Train-time", "mnist.py"), dict(error=0.96, time="about 6 h", gpu="Titan Black", note="")),
    (("BinaryNet/Train-time", "cifar10.py"), dict(error=11.40, time="about 23 h", gpu="Titan Black", note="")),
    (("BinaryNet/Train-time", "svhn.py"), dict(error=2.80, time="about 2 days", gpu="Titan Black", note="")),
    (("BinaryNet/Run-time", "mnist.py"), dict(error=0.96, time="0.4 s to 1.5 s for the 10000 test images",
                                              gpu="depends on the GPU", note="identical for all three kernels")),
])

# The speed figures of [BNN] §4 and the Run-time README (docs/ORIGINALS.md §4.7). ratio: times faster.
SPEEDUPS = [
    dict(what="8192^3 binary GEMM, XNOR kernel vs the baseline (unoptimized float) kernel", ratio=23,
         hardware="GTX 750", source="Run-time README; [BNN] §4 and figure"),
    dict(what="8192^3 binary GEMM, XNOR kernel vs cuBLAS", ratio=3.4, hardware="GTX 750",
         source="Run-time README; [BNN] §4 and figure"),
    dict(what="MNIST MLP (3 x 4096) on the 10000 test images, XNOR kernel vs baseline kernel", ratio=7,
         hardware="GTX 750", source="[BNN] abstract and §4 figure"),
    dict(what="8192^3 binary GEMM, XNOR vs baseline (PyCUDA script)", ratio=22, hardware="GTX 750",
         source="Run-time README before 2016-02-12"),
    dict(what="8192^3, Theano-wrapped XNOR vs wrapped baseline", ratio=14, hardware="GTX 750",
         source="Run-time README before 2016-02-12"),
    dict(what="8192^3, Theano-wrapped XNOR vs Theano's T.dot", ratio=2.5, hardware="GTX 750",
         source="Run-time README before 2016-02-12"),
]

# The released scripts' schedules (docs/ORIGINALS.md §2.1): what a reduced budget is measured against.
# Key: (dataset, family). units: MNIST hidden units; widths: ConvNet channels; train_rows: training set size.
ORIGINAL_SCHEDULES = {
    ("mnist", "binarynet"): dict(epochs=1000, train_rows=50000, units=4096, batch_size=100),
    ("mnist", "binaryconnect"): dict(epochs=250, train_rows=50000, units=2048, batch_size=100),
    ("cifar10", "binarynet"): dict(epochs=500, train_rows=45000, widths=(128, 256, 512), batch_size=50),
    ("cifar10", "binaryconnect"): dict(epochs=500, train_rows=45000, widths=(128, 256, 512), batch_size=50),
    ("svhn", "binarynet"): dict(epochs=200, train_rows=598388, widths=(64, 128, 256), batch_size=50),
    ("svhn", "binaryconnect"): dict(epochs=200, train_rows=598388, widths=(64, 128, 256), batch_size=50),
    # The Torch7 code ran until stopped: its epoch counts are the Theano scripts' (docs/torch7.md). Its learning
    # rate is halved every 20 (MNIST, SVHN) or 50 (CIFAR-10) epochs, which a shorter run keeps as it is.
    ("mnist", "binarynet-torch7"): dict(epochs=1000, train_rows=50000, units=2048, batch_size=100,
                                        lr_rule="learning rate still halved every 20 epochs"),
    ("cifar10", "binarynet-torch7"): dict(epochs=500, train_rows=45000, widths=(128, 256, 512), batch_size=200,
                                          lr_rule="learning rate still halved every 50 epochs"),
    ("svhn", "binarynet-torch7"): dict(epochs=200, train_rows=598388, widths=(64, 128, 256), batch_size=200,
                                       lr_rule="learning rate still halved every 20 epochs"),
}


def cell(row):
    """The published cell of one of reproduce.py's rows, or None for a row without a published number."""
    return BY_ROW.get(row)


def tolerance(c):
    """How far (percentage points) ours may lie from the published error and still agree, and the rule's name."""
    if c.spread is not None and (c.runs or 1) > 1:
        return SIGMAS * c.spread, f"{SIGMAS} x the published standard deviation ({c.runs} runs)"
    return TOLERANCE_RELATIVE * c.error, f"{100 * TOLERANCE_RELATIVE:.0f} % of the published error (single run)"


def short_source(c):
    """'[BC] Table 2 (NIPS version)' for a cell."""
    return f"{c.source[0].split()[0]} {c.source[1]}"


def source_text(c):
    paper, table, page, column = c.source
    where = "" if page is None else f", p. {page}"
    return f"{paper}, {table}, {column} column{where}"
