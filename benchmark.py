#!/usr/bin/env python
"""The paper's kernel benchmark (ORIGINALS.md §4.6-4.7) on this machine's CPU, or on a GPU when one is there.

For each size m x n x k, C = A . B on random +-1 float32 matrices (both operands random), timed after warm-up
(median of --repeats calls; the kernels take turns, one call each per round):
  baseline      naive C GEMM: the paper's 16x16 tiled "unoptimized baseline" as scalar loops (kernels/xnor_cpu.c)
  BLAS (Theano) T.dot compiled by Theano, i.e. the sgemm Theano links (MKL via plumbing/compat.py)
  BLAS (NumPy)  numpy.dot, i.e. NumPy's own BLAS (OpenBLAS in the wheel)
  XNOR          pack both operands + XNOR-popcount GEMM (packing included, as in the paper)
  XNOR nopack   XNOR-popcount GEMM on operands packed beforehand
Every product must equal the XNOR result exactly (integers below 2^24 are exact in float32).

--isa restricts both sides to one instruction set on this machine, so the ratio a CPU with only that ISA would
see is measured here, side by side: the XNOR path is forced, NumPy's and Theano's OpenBLAS get the matching core type
(OPENBLAS_CORETYPE) and MKL its instruction cap (MKL_ENABLE_INSTRUCTIONS), both set before the libraries load.
For the AVX-512 and AVX2 paths the benchmark also measures this core's instruction throughput (register-only
loops, same thread count) and prints the share of that limit the XNOR GEMM reaches (docs/kernels.md).

    python benchmark.py                         # CPU: 4096^3 at 1 thread and at all threads
    python benchmark.py --sizes 4096,8192 --isa avx2
    python benchmark.py --sizes 2048,1024x4096x512 --threads 2 --plot gemm.png
"""
import os
import statistics
import sys
import time

from plumbing import cli
from plumbing.errors import ArchiveError

# NumPy, Theano and the kernels are imported inside the functions: OPENBLAS_CORETYPE must be set before NumPy
# loads its OpenBLAS (set_openblas_coretype runs first in main).

PAPER = ("Paper (GTX 750, 8192^3, ORIGINALS.md §4.7): XNOR kernel 23x faster than the baseline kernel and "
         "3.4x faster than cuBLAS; the Theano-wrapped XNOR 14x the wrapped baseline and 2.5x T.dot.")
BASELINE_NOTE = ("baseline = the paper's unoptimized kernel (16x16 tiles, one accumulator per output) as plain "
                 "scalar C loops, -O2 without vectorisation; XNOR and NumPy write into preallocated outputs (out=), "
                 "Theano allocates its own")


# --isa: XNOR path, OpenBLAS core type, MKL instruction cap.  OpenBLAS's Haswell kernels are its AVX2 ones,
# SkylakeX its AVX-512 ones, Nehalem its SSE4.2 ones (the x86-64 + POPCNT level of the portable path).
ISAS = {
    "avx512": ("avx512", "SkylakeX", "AVX512"),
    "avx2": ("avx2", "Haswell", "AVX2"),
    "portable": ("portable", "Nehalem", "SSE4_2"),
}
# Vector instructions per product of the AVX2 kernel (8 products = 8 xor + 7 carry-save adders x 5 + one
# nibble-lookup popcount (and, shift, and, 2 vpshufb, add, vpsadbw) + one add: 51 instructions).
AVX2_OPS_PER_PRODUCT = 51 / 8


class BenchmarkError(ArchiveError):
    """Bad command-line value or an unusable device; printed as one line."""


# ------------------------------------------------------------------------------------------------ arguments

def parse_sizes(text):
    """'4096,1024x2048x512' -> [(4096, 4096, 4096), (1024, 2048, 512)]  (m x n x k, C = A(m x n) . B(n x k))."""
    sizes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        try:
            dims = [int(p) for p in parts]
        except ValueError:
            dims = []
        if len(dims) == 1:
            dims = dims * 3
        if len(dims) != 3 or min(dims) < 1:
            raise BenchmarkError(f"bad size {item!r} in --sizes: use N or MxNxK with positive integers, e.g. "
                                 "--sizes 4096,1024x2048x512")
        sizes.append(tuple(dims))
    return sizes


def parse_threads(text, all_cores):
    """'1,all' -> [1, all_cores]."""
    counts = []
    for item in text.split(","):
        item = item.strip().lower()
        if item == "all":
            counts.append(all_cores)
        elif item.isdigit() and int(item) >= 1:
            counts.append(int(item))
        else:
            raise BenchmarkError(f"bad thread count {item!r} in --threads: use positive integers or 'all', e.g. "
                                 "--threads 1,all")
    return list(dict.fromkeys(counts))


def build_parser():
    p = cli.Parser("XNOR-popcount GEMM vs baseline vs BLAS (the paper's kernel benchmark, ORIGINALS.md §4.6).",
                   formatter_class=None)
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="auto: the GPU when kernels.gpu finds one, else the CPU (default auto)")
    p.add_argument("--sizes", default=None,
                   help="comma list of N (N^3) or MxNxK; default 8192 on a GPU (the paper's), 4096 on the CPU")
    p.add_argument("--threads", default="1,all", help="CPU thread counts, comma list, 'all' = every core "
                                                      "(default 1,all)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per kernel; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    p.add_argument("--settle", type=float, default=0.2,
                   help="CPU: seconds of pause after every timed call (default 0.2): OpenBLAS's idle threads spin "
                        "for about 0.1 s after a call and would take cores from the next kernel")
    p.add_argument("--baseline-max-size", type=int, default=2048,
                   help="skip the slow CPU baseline when m*n*k exceeds this size cubed (default 2048)")
    p.add_argument("--isa", choices=["auto"] + sorted(ISAS), default="auto",
                   help="restrict both sides to one instruction set: the XNOR path, OpenBLAS's core type and MKL's "
                        "instruction cap (default auto: the fastest of each)")
    p.add_argument("--openblas-coretype", default="auto",
                   help="OPENBLAS_CORETYPE for NumPy's and Theano's OpenBLAS: 'auto' = the one matching --isa, else "
                        "SkylakeX on AVX-512 CPUs (its fastest kernel here), 'keep' = leave the environment alone, "
                        "or a core name")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall: elapsed time (default); cpu: the process's CPU time, which on a machine other "
                        "processes share counts only the time the kernel had a core (needs --threads 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the +-1 matrices")
    p.add_argument("--plot", metavar="FILE.png", help="write a paper-style bar chart of the timings")
    p.add_argument("--inference", action="store_true", help="instead: end-to-end MNIST MLP inference, float vs "
                   "XNOR paths (binary_inference.benchmark_inference); with --model FILE [--data-dir D] or --random")
    p.add_argument("--model", help="--inference: trained parameters (.npz), run on the MNIST test set")
    p.add_argument("--data-dir", help="--inference --model: folder with the MNIST files (default: download)")
    p.add_argument("--random", action="store_true", help="--inference: a random 3x4096 model on random pixels")
    return p


def check_args(args):
    if args.repeats < 1 or args.warmup < 0:
        raise BenchmarkError(f"--repeats must be >= 1 and --warmup >= 0 (got {args.repeats}, {args.warmup})")
    if not 0 <= args.settle <= 60:
        raise BenchmarkError(f"--settle must be between 0 and 60 seconds (got {args.settle})")
    if args.baseline_max_size < 0:
        raise BenchmarkError(f"--baseline-max-size must be >= 0, got {args.baseline_max_size}")
    if args.clock == "cpu" and args.threads.strip() != "1":
        raise BenchmarkError("--clock cpu measures one thread only (CPU time of several threads is not elapsed "
                             "time): add --threads 1, or use --clock wall")
    if args.plot and not args.plot.lower().endswith(".png"):
        raise BenchmarkError(f"--plot takes a .png file name, got {args.plot!r}")


def cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def set_openblas_coretype(choice, isa="auto"):
    """Must run before NumPy is imported. Returns a one-line description of what was done."""
    before = os.environ.get("OPENBLAS_CORETYPE")
    if choice == "keep":
        return f"OPENBLAS_CORETYPE left as {before}"
    if choice == "auto" and isa != "auto":
        choice = ISAS[isa][1]
    elif choice == "auto":
        if "avx512f" not in cpuinfo_flags():
            return f"OPENBLAS_CORETYPE left as {before} (no AVX-512)"
        choice = "SkylakeX"
    os.environ["OPENBLAS_CORETYPE"] = choice
    os.environ["BINARYNET_OPENBLAS_CORETYPE"] = choice  # the same core type for Theano's OpenBLAS (plumbing/compat.py)
    return (f"OPENBLAS_CORETYPE={choice} (was {before}; the NumPy 1.23.5 wheel's OpenBLAS 0.3.20 misdetects this CPU, "
            "see docs/environment.md)")


def restrict_isa(isa):
    """--isa: check the CPU has it and cap MKL before it loads. Returns (XNOR path, description)."""
    if isa == "auto":
        return "auto", "auto (fastest XNOR path, BLAS libraries' own choice)"
    from kernels import cpu
    path, _, mkl_cap = ISAS[isa]
    if path not in cpu.available_paths():
        available = ", ".join(p for p in cpu.available_paths() if p in ISAS)
        raise BenchmarkError(f"--isa {isa}: this CPU lacks {cpu.NEEDS[path]}; available here: {available}")
    os.environ["MKL_ENABLE_INSTRUCTIONS"] = mkl_cap
    return path, (f"{isa} (XNOR path '{path}', MKL_ENABLE_INSTRUCTIONS={mkl_cap}, "
                  f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')})")


# ------------------------------------------------------------------------------------------------ devices

def choose_device(requested):
    """'cpu' or 'gpu'; prints why when auto falls back to the CPU."""
    if requested == "cpu":
        return "cpu"
    try:
        from kernels import gpu
        ok, message = gpu.gpu_status()
    except Exception as error:  # the GPU module is optional: any failure to load means "no GPU here"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        ok, message = False, f"kernels.gpu unavailable ({reason})"
    if ok:
        return "gpu"
    if requested == "gpu":
        raise BenchmarkError(f"--device gpu: {message}")
    print(f"No usable GPU ({message}); falling back to the CPU.")
    return "cpu"


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_in_turns(fns, repeats, warmup, clock="wall", settle=0.0):
    """[(median, minimum, last result)] seconds of each fn() over `repeats` calls, after `warmup` calls each.  The
    calls take turns (each round calls every fn once), so a busy moment of a shared machine falls on all of them
    alike instead of on whichever ran then; after each timed call the machine gets `settle` seconds to let the
    worker threads of that call go idle.  clock "cpu" is the process's CPU time: on a shared machine it counts only
    the time the (single) thread had a core."""
    results = [None] * len(fns)
    for i, fn in enumerate(fns):
        for _ in range(warmup):
            results[i] = fn()
    times = [[] for _ in fns]
    now = CLOCKS[clock]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = now()
            results[i] = fn()
            times[i].append(now() - start)
            time.sleep(settle)
    return [(statistics.median(t), min(t), result) for t, result in zip(times, results)]


def random_signs(rng, shape):
    import numpy as np
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def blas_descriptions():
    """One line per BLAS/OpenMP library loaded, from threadpoolctl."""
    import threadpoolctl
    lines = []
    for lib in threadpoolctl.threadpool_info():
        extra = lib.get("architecture") or lib.get("threading_layer") or ""
        lines.append(f"  {lib.get('internal_api', '?'):<10} {lib.get('user_api', '?'):<9} "
                     f"{str(lib.get('version')):<16} kernel/layer={extra:<10} threads={lib.get('num_threads')} "
                     f"({os.path.basename(lib.get('filepath', ''))})")
    return lines


def numpy_blas_label():
    import threadpoolctl
    for lib in threadpoolctl.threadpool_info():
        if lib.get("user_api") == "blas" and "numpy" in lib.get("filepath", ""):
            return f"{lib['internal_api']} {lib.get('version')} {lib.get('architecture') or ''}"
    return "unknown BLAS"


def theano_blas_label():
    """The BLAS Theano's T.dot calls, with the kernel threadpoolctl reports for it (the one in use)."""
    import threadpoolctl
    from plumbing import compat
    name = compat.BLAS_LDFLAGS.rpartition("-l:")[2]
    for lib in threadpoolctl.threadpool_info():
        if lib.get("user_api") == "blas" and name and os.path.basename(lib.get("filepath", "")) == name:
            return f"{lib['internal_api']} {lib.get('version')} {lib.get('architecture') or ''}".strip()
    return compat.BLAS_NAME.split(" ")[0]


def threads_in_use():
    """Thread counts threadpoolctl reports right now, per BLAS library (to show a 1-thread row is 1 thread)."""
    import threadpoolctl
    return {lib["internal_api"] + ":" + os.path.basename(lib["filepath"]).split("-")[0]: lib["num_threads"]
            for lib in threadpoolctl.threadpool_info() if lib.get("user_api") == "blas"}


def peak_rate(which, threads, trials=7, seconds=0.03):
    """The highest of `trials` short measurements of cpu.measure_rate: a peak rate, which a busy moment of a shared
    host can only lower (one longer measurement moved by up to 40 % between runs on the Zen 3)."""
    from kernels import cpu
    return max(cpu.measure_rate(which, threads, seconds) for _ in range(trials))


def highest_limits(rows):
    """Give every row the highest of the limits measured for its thread count in this run: a limit is a peak rate,
    and each XNOR row's own measurement (taken right after its calls) may have met a busy moment."""
    best = {}
    for row in rows:
        for name, rate in row.get("limits", {}).items():
            best[row["threads"], name] = max(rate, best.get((row["threads"], name), 0.0))
    for row in rows:
        if "limits" in row:
            row["limits"] = {name: best[row["threads"], name] for name in row["limits"]}
    return rows


def instruction_limits(path, threads):
    """{name: bit-products per second} this core (x threads) can issue for the XNOR path, from measured rates."""
    limits = {}
    if path == "avx512":
        limits["popcount peak"] = peak_rate("popcnt512", threads) * 512
        limits["xor+popcnt+add issue limit"] = peak_rate("product512", threads) * 512
    elif path == "avx2":
        limits[f"AVX2 issue limit ({AVX2_OPS_PER_PRODUCT:.2f} ops/256 bits)"] = \
            peak_rate("add256", threads) / AVX2_OPS_PER_PRODUCT * 256
    return limits


def run_cpu(sizes, thread_counts, args):
    """Time every kernel for every size and thread count; returns a list of row dicts."""
    import numpy as np
    import threadpoolctl

    from plumbing.compat import T, theano
    from kernels import cpu

    a, b = T.matrix("a"), T.matrix("b")
    theano_dot = theano.function([a, b], T.dot(a, b))
    rows = []
    for (m, n, k) in sizes:
        rng = np.random.default_rng(args.seed)
        A, B = random_signs(rng, (m, n)), random_signs(rng, (n, k))
        for threads in thread_counts:
            with threadpoolctl.threadpool_limits(limits=threads):
                in_use = threads_in_use()
                if any(count != threads for count in in_use.values()):
                    raise BenchmarkError(f"could not set BLAS threads to {threads}: threadpoolctl reports {in_use}")
                path = args.xnor_path
                Ap, Bp = cpu.pack_rows(A, threads, path), cpu.pack_cols(B, threads, path)
                # XNOR and NumPy write into outputs allocated once (out=), so a call does not pay for the page
                # faults of 4 m k fresh bytes; each has its own, so the agreement check compares distinct arrays.
                outs = [np.empty((m, k), dtype=np.float32) for _ in range(3)]
                contestants = [
                    ("XNOR (packing incl.)", lambda: cpu.xnor_gemm(A, B, threads=threads, path=path, out=outs[0])),
                    ("XNOR (packing excl.)", lambda: cpu.xnor_gemm_packed(Ap, Bp, n, threads=threads, path=path,
                                                                          out=outs[1])),
                    ("BLAS Theano T.dot, " + theano_blas_label(), lambda: theano_dot(A, B)),
                    ("BLAS NumPy, " + numpy_blas_label().strip(), lambda: np.dot(A, B, out=outs[2])),
                    ("baseline (naive C)", lambda: cpu.baseline_gemm(A, B, threads=threads)),
                ]
                skip = f"skipped: larger than --baseline-max-size {args.baseline_max_size}^3"
                timed = [(name, fn) for name, fn in contestants
                         if not (name.startswith("baseline") and m * n * k > args.baseline_max_size ** 3)]
                measured = dict(zip([name for name, _ in timed],
                                    time_in_turns([fn for _, fn in timed], args.repeats, args.warmup, args.clock,
                                                  args.settle)))
                reference = None
                for name, _ in contestants:
                    row = {"size": (m, n, k), "threads": threads, "kernel": name, "seconds": None,
                           "agrees": None, "note": "" if name in measured else skip}
                    if name in measured:
                        row["seconds"], row["min"], result = measured[name]
                        reference = result.copy() if reference is None else reference
                        row["agrees"] = bool(np.array_equal(result, reference))
                    if name.startswith("XNOR") and row["seconds"] is not None:
                        row["limits"] = instruction_limits(cpu.resolved_path(path), threads)
                    rows.append(row)
                    size = "x".join(map(str, (m, n, k)))
                    outcome = f"{row['seconds']:.5f} s" if row["seconds"] is not None else row["note"]
                    print(f"  measured {size:>18} threads={threads} {name:<42} {outcome}", flush=True)
    return rows


def run_gpu(sizes, args):
    from kernels import gpu
    try:
        kernels = gpu.GpuKernels()
    except gpu.GpuUnavailable as error:
        raise BenchmarkError(f"GPU unavailable: {str(error).splitlines()[0]}")
    rows = []
    names = [("xnor", "XNOR (packing incl.)"), ("xnor_nopack", "XNOR (packing excl.)"), ("cublas", "cuBLAS sgemm"),
             ("baseline", "baseline (16x16 tiled CUDA)")]
    with kernels:  # closes the session (context, cuBLAS handle, device memory)
        for (m, n, k) in sizes:
            t = kernels.time_kernels(m, n, k, repeats=args.repeats, warmup=args.warmup, seed=args.seed)
            for key, name in names:
                rows.append({"size": (m, n, k), "threads": "GPU", "kernel": name, "seconds": t[key],
                             "min": t[key + "_min"], "agrees": bool(t["agree"]), "note": ""})
    return rows


# ------------------------------------------------------------------------------------------------ report

def print_table(rows):
    """Seconds, GFLOP/s (2mnk/t; for XNOR: equivalent), speed-ups of XNOR over baseline and the best BLAS."""
    groups = {}
    for row in rows:
        groups.setdefault((row["size"], row["threads"]), []).append(row)
    for (size, threads), group in groups.items():
        m, n, k = size
        flops = 2.0 * m * n * k
        timed = {r["kernel"]: r["seconds"] for r in group if r["seconds"] is not None}
        blas = [s for name, s in timed.items() if name.startswith(("BLAS", "cuBLAS"))]
        best_blas = min(blas) if blas else None
        base = next((r["seconds"] for r in group if r["kernel"].startswith("baseline")), None)
        print(f"\n{m} x {n} x {k} (m x n x k), threads: {threads}")
        print(f"  {'kernel':<44} {'median s':>10} {'min s':>10} {'GFLOP/s':>10} {'baseline/t':>11} "
              f"{'bestBLAS/t':>11} {'agrees':>6}")
        for r in group:
            if r["seconds"] is None:
                print(f"  {r['kernel']:<44} {r['note']}")
                continue
            s = r["seconds"]
            over_base = f"{base / s:.1f}x" if base else "n/a"
            over_blas = f"{best_blas / s:.2f}x" if best_blas else "n/a"
            agrees = "yes" if r["agrees"] else "NO"
            print(f"  {r['kernel']:<44} {s:>10.5f} {r.get('min', s):>10.5f} {flops / s / 1e9:>10.1f} {over_base:>11} "
                  f"{over_blas:>11} {agrees:>6}")
        for r in group:
            for limit, bits_per_second in r.get("limits", {}).items():
                percent = 100.0 * (m * n * k / r["seconds"]) / bits_per_second
                gflops = 2 * bits_per_second / 1e9
                print(f"    limit: {r['kernel']} reaches {percent:.0f}% of the {limit} ({gflops:.0f} GFLOP-eq/s, "
                      f"the highest measured on {threads} thread(s) in this run)")
    print("\n" + PAPER)
    print("GFLOP/s = 2mnk / median seconds (for XNOR: equivalent float operations). x/t columns: median time of "
          "that kernel divided by this row's (>1 = this row is faster).")


def plot(rows, filename):
    """Grouped bars of seconds per kernel, one group per (size, threads), log scale (like the paper's figure)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["size"], r["threads"]) for r in rows))
    kernels = list(dict.fromkeys(r["kernel"] for r in rows))
    width = 0.8 / len(kernels)
    fig, ax = plt.subplots(figsize=(2.5 + 2.2 * len(groups), 4.5))
    for i, kernel in enumerate(kernels):
        xs, ys = [], []
        for g, key in enumerate(groups):
            s = next((r["seconds"] for r in rows if (r["size"], r["threads"]) == key and r["kernel"] == kernel), None)
            if s is not None:
                xs.append(g + (i - (len(kernels) - 1) / 2) * width)
                ys.append(s)
        if ys:  # a kernel skipped at every size (the baseline above --baseline-max-size) gets no legend entry
            ax.bar(xs, ys, width, label=kernel, color=f"C{i}")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{'x'.join(map(str, size))}\nthreads={t}" for size, t in groups])
    ax.set_yscale("log")
    ax.set_ylabel("seconds per GEMM (log scale)")
    ax.set_title("Binary matrix multiplication: XNOR-popcount vs float kernels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(filename, dpi=120)
    plt.close(fig)


def machine_line():
    """CPU model, the tuning chosen for it and the XNOR paths it runs (printed with every ratio)."""
    from kernels import cpu
    features, tuning = cpu.cpu_features(), cpu.tuning_info()
    return (f"CPU: {features['model']} | {features['cpus']} logical CPUs usable | tuning: {tuning['uarch']} | "
            f"XNOR paths: {', '.join(cpu.available_paths())}")


def print_ratios(rows, isa_note):
    """One line per size and thread count: XNOR over the best BLAS, with the ISA and the machine."""
    print(f"\nRatios, ISA {isa_note}:")
    print("  " + machine_line())
    groups = {}
    for row in rows:
        groups.setdefault((row["size"], row["threads"]), []).append(row)
    for (size, threads), group in groups.items():
        timed = {r["kernel"]: r["seconds"] for r in group if r["seconds"] is not None}
        blas = {name: s for name, s in timed.items() if name.startswith(("BLAS", "cuBLAS"))}
        if not blas:
            continue
        best_name = min(blas, key=blas.get)
        parts = [f"{name.split(' (')[1].rstrip(')')} {blas[best_name] / s:.2f}x"
                 for name, s in timed.items() if name.startswith("XNOR")]
        print(f"  {'x'.join(map(str, size))} threads={threads}: XNOR {', '.join(parts)} the best sgemm ({best_name})")


def print_hardware(coretype_note, thread_counts, isa_note):
    from plumbing import compat
    print(machine_line())
    print(f"ISA: {isa_note}")
    print(f"Thread counts: {', '.join(map(str, thread_counts))} (XNOR/baseline: pthreads; "
          "BLAS: threadpoolctl.threadpool_limits)")
    print(f"Theano BLAS: {compat.BLAS_NAME} | {coretype_note}")
    print("threadpoolctl.threadpool_info():")
    print("\n".join(blas_descriptions()))
    print(BASELINE_NOTE)


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    coretype_note = set_openblas_coretype(args.openblas_coretype, args.isa)
    if args.inference:
        import binary_inference  # after OPENBLAS_CORETYPE is set: it loads NumPy
        return binary_inference.benchmark_from_args(args)
    args.xnor_path, isa_note = restrict_isa(args.isa)
    device = choose_device("cpu" if args.isa != "auto" else args.device)
    sizes = parse_sizes(args.sizes or ("8192" if device == "gpu" else "4096"))
    if device == "gpu":
        rows = run_gpu(sizes, args)
        print("Device: GPU")
    else:
        all_cores = len(os.sched_getaffinity(0))
        thread_counts = parse_threads(args.threads, all_cores)
        print_hardware(coretype_note, thread_counts, isa_note)
        print(f"Load average before: {cli.load_averages()} (other processes on these cores make timings noisy) | "
              f"clock: {args.clock}")
        rows = highest_limits(run_cpu(sizes, thread_counts, args))
        print(f"Load average after:  {cli.load_averages()}")
    print_table(rows)
    if device == "cpu":
        print_ratios(rows, isa_note)
    if args.plot:
        plot(rows, args.plot)
        print(f"Wrote {args.plot}")
    if any(r["agrees"] is False for r in rows):
        raise BenchmarkError("the kernels' products differ (see the 'agrees' column)")
    return 0


if __name__ == "__main__":
    sys.exit(cli.main_guard(main))
