"""Every code path of kernels/xnor_cpu.c is exact: AVX-512, AVX2 and portable here (x86), NEON and portable on
AArch64 built with gcc-aarch64-linux-gnu and run under qemu-aarch64-static (docs/kernels.md).

The reference is NumPy: sign(A) @ sign(B) in float64 with sign(0) = +1, and np.packbits for the packed words."""
import os
import platform
import shutil
import struct
import subprocess

import numpy as np
import pytest

from kernels import cpu
from kernels.cpu import KernelError
from reproduce import memory_gib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER_SOURCE = os.path.join(ROOT, "tests", "xnor_cpu_driver.c")
INSTALL_HINT = "install it with: bash scripts/system_packages.sh (Debian: gcc-aarch64-linux-gnu, qemu-user-static)"

# Shapes (m, n, k): odd m and k, n below, at and past multiples of 64 (one word) and 512 (one AVX-512 vector,
# one Harley-Seal group of 8 AVX2 words), and the 24-column AVX-512 panel edge.
RAGGED = [(1, 1, 1), (3, 63, 5), (2, 64, 24), (5, 65, 25), (9, 511, 23), (8, 512, 47), (7, 513, 49),
          (17, 1000, 3), (1, 4097, 2), (33, 130, 71)]


def cpuinfo_flags():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def x86_paths_from_cpuinfo():
    """The x86 paths /proc/cpuinfo says this CPU runs (independently of the library's own cpuid checks)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    flags = cpuinfo_flags()
    paths = []
    if {"avx512f", "avx512dq", "avx512vl", "avx512bw", "avx512_vpopcntdq"} <= flags:
        paths.append("avx512")
    if "avx2" in flags:
        paths.append("avx2")
    return paths + ["portable"]


HOST_PATHS = x86_paths_from_cpuinfo() or ["portable"]


def signs(x):
    return np.where(x >= 0, 1.0, -1.0)


def reference_gemm(A, B):
    return (signs(A) @ signs(B)).astype(np.float32)


def reference_pack(x):
    """Bit j of word w of row r = [x[r, 64w + j] >= 0], with np.packbits (little bit order)."""
    words = (x.shape[1] + 63) // 64
    bits = np.zeros((x.shape[0], words * 64), dtype=np.uint8)
    bits[:, :x.shape[1]] = x >= 0
    return np.packbits(bits, axis=1, bitorder="little").view("<u8").astype(np.uint64)


def random_inputs(rng, m, n, k):
    """Gaussian matrices with some exact zeros (zero must count as +1) and negative zeros."""
    A = rng.standard_normal((m, n)).astype(np.float32)
    B = rng.standard_normal((n, k)).astype(np.float32)
    A[rng.random(A.shape) < 0.1] = 0.0
    B[rng.random(B.shape) < 0.1] = -0.0
    return A, B


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def restore_tuning(before):
    cpu.set_tuning(task_rows=before["task_rows"], block_share=before["block_share"], prefetch=True,
                   first_block=before["first_block"], overlap=before["overlap"])


@pytest.fixture
def tiny_blocks():
    """Tuning that cuts C into one panel per column block and 24 rows per task: every pipeline step runs."""
    before = cpu.tuning_info()
    cpu.set_tuning(task_rows=24, block_share=1e-9, first_block=1e-9, overlap=True)
    yield
    restore_tuning(before)


@pytest.fixture
def packed_first():
    """Tuning that packs both operands before any product (no packing between the micro tiles)."""
    before = cpu.tuning_info()
    cpu.set_tuning(task_rows=24, block_share=1e-9, overlap=False)
    yield
    restore_tuning(before)


# ------------------------------------------------------------------------------------------ paths on this CPU

def test_available_paths_match_cpuinfo():
    assert cpu.available_paths() == HOST_PATHS


def test_missing_path_is_one_clear_error():
    missing = next(p for p in ("avx512", "avx2", "neon") if p not in cpu.available_paths())
    with pytest.raises(KernelError, match="path='auto'"):
        cpu.xnor_gemm(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), path=missing)


def test_hand_checked_product_on_every_path():
    A = np.array([[1, -1, 0], [-2, -3, 4]], dtype=np.float32)    # signs [+ - +], [- - +]
    B = np.array([[1, -1], [1, 1], [-1, 0]], dtype=np.float32)   # columns [+ + -], [- + +]
    expected = np.array([[1 - 1 - 1, -1 - 1 + 1], [-1 - 1 - 1, 1 - 1 + 1]], dtype=np.float32)
    for path in HOST_PATHS:
        assert np.array_equal(cpu.xnor_gemm(A, B, path=path), expected), path


@pytest.mark.parametrize("path", HOST_PATHS)
@pytest.mark.parametrize("shape", RAGGED)
def test_fused_and_packed_gemm_exact(rng, path, shape):
    A, B = random_inputs(rng, *shape)
    expected = reference_gemm(A, B)
    assert np.array_equal(cpu.xnor_gemm(A, B, threads=2, path=path), expected)
    packed = cpu.xnor_gemm_packed(cpu.pack_rows(A, path=path), cpu.pack_cols(B, path=path), shape[1], threads=1,
                                  path=path)
    assert np.array_equal(packed, expected)


@pytest.mark.parametrize("path", HOST_PATHS)
@pytest.mark.parametrize("threads", [1, 2])
def test_pipeline_with_many_blocks_exact(rng, tiny_blocks, path, threads):
    A, B = random_inputs(rng, 77, 700, 101)
    expected = reference_gemm(A, B)
    assert np.array_equal(cpu.xnor_gemm(A, B, threads=threads, path=path), expected)
    assert np.array_equal(cpu.xnor_gemm_packed(cpu.pack_rows(A), cpu.pack_cols(B), 700, threads=threads, path=path),
                          expected)


def unaligned(x):
    """A C-contiguous copy of x that starts one element past a 64-byte boundary (NumPy's arrays start 16 bytes past)."""
    per_line = 64 // x.itemsize
    buffer = np.empty(x.size + per_line + 1, dtype=x.dtype)
    start = (-buffer.ctypes.data // x.itemsize) % per_line + 1
    view = buffer[start:start + x.size].reshape(x.shape)
    view[...] = x
    assert view.flags.c_contiguous and view.ctypes.data % 64 == x.itemsize
    return view


@pytest.mark.parametrize("path", HOST_PATHS)
@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_pipeline_exact_on_unaligned_inputs(rng, tiny_blocks, path, prefetch, threads):
    """The packing between the tiles prefetches its inputs by cache lines: inputs not aligned to a line, many blocks
    of B, a ragged inner dimension, prefetching on and off (set_tuning(prefetch=...))."""
    cpu.set_tuning(prefetch=prefetch)
    A, B = random_inputs(rng, 61, 650, 97)
    expected = reference_gemm(A, B)
    assert np.array_equal(cpu.xnor_gemm(unaligned(A), unaligned(B), threads=threads, path=path), expected)
    Ap, Bp = cpu.pack_rows(A, path=path), cpu.pack_cols(unaligned(B), path=path)
    assert np.array_equal(cpu.xnor_gemm_packed(unaligned(Ap), unaligned(Bp), 650, threads=threads, path=path),
                          expected)


@pytest.mark.parametrize("path", HOST_PATHS)
@pytest.mark.parametrize("threads", [1, 2])
def test_blocks_sharing_the_rest_unequally_exact(rng, path, threads):
    """7 panels of 24 columns (AVX-512), block 0 = 2 panels, at most 2 panels per later block: the 5 others go to
    3 blocks of 1, 2 and 2 panels (the other paths' narrower panels give other uneven splits)."""
    before = cpu.tuning_info()
    words = 5  # n = 300
    try:
        cpu.set_tuning(task_rows=24, first_block=0.25, block_share=2.5 * words * 8 * 24 / before["l2_bytes"])
        A, B = random_inputs(rng, 50, 300, 7 * 24 - 3)
        expected = reference_gemm(A, B)
        assert np.array_equal(cpu.xnor_gemm(A, B, threads=threads, path=path), expected)
        assert np.array_equal(cpu.xnor_gemm_packed(cpu.pack_rows(A), cpu.pack_cols(B), 300, threads=threads,
                                                   path=path), expected)
    finally:
        restore_tuning(before)


@pytest.mark.parametrize("path", HOST_PATHS)
def test_packed_first_mode_exact(rng, packed_first, path):
    A, B = random_inputs(rng, 53, 333, 77)
    expected = reference_gemm(A, B)
    assert np.array_equal(cpu.xnor_gemm(A, B, threads=2, path=path), expected)
    assert np.array_equal(cpu.xnor_gemm_packed(cpu.pack_rows(A), cpu.pack_cols(B), 333, threads=2, path=path),
                          expected)


@pytest.mark.parametrize("path", HOST_PATHS)
def test_all_agree_and_all_differ(path):
    n = 64 * 8 * 9 + 64 * 3 + 5  # many Harley-Seal groups and byte-counter spans, then a ragged tail
    plus = np.ones((3, n), dtype=np.float32)
    assert np.array_equal(cpu.xnor_gemm(plus, plus.T.copy(), path=path), np.full((3, 3), n, np.float32))
    assert np.array_equal(cpu.xnor_gemm(plus, -plus.T.copy(), path=path), np.full((3, 3), -n, np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("path", HOST_PATHS)
def test_inner_dimension_past_two_to_the_31(path):
    """n = 2^31 + 64: n - 2h no longer fits in 32 bits (the AVX2 tile then converts in scalar code).

    Row 0 of A has 8 ones (word 5 = 0xFF), row 1 none; columns 1 and 6 of B are all ones, the others all zeros.
    Mismatches h: 8 (row 0, zero column), n - 8 (row 0, ones column), 0 and n (row 1). C = float32(n - 2h):
    n - 16, -(n - 16), n and -n, all rounded to float32 (spacing 256 at 2^31). About 3 GiB is touched: the zero
    words are never written, so they stay unmapped pages; the panels of B are written in full."""
    available = memory_gib()
    if available < 4:
        pytest.skip(f"needs 4 GiB of available memory, {available:.1f} GiB available (a small VM or container?)")
    n = 2 ** 31 + 64
    words = n // 64
    Ap = np.zeros((2, words), dtype=np.uint64)
    Ap[0, 5] = 0xFF
    Bp = np.zeros((8, words), dtype=np.uint64)
    Bp[[1, 6]] = np.uint64(0xFFFFFFFFFFFFFFFF)
    ones_column = np.isin(np.arange(8), [1, 6])
    expected = np.array([np.where(ones_column, -(n - 16), n - 16), np.where(ones_column, -n, n)]).astype(np.float32)
    assert expected[0, 0] == np.float32(2 ** 31) and expected[1, 1] == np.float32(-2 ** 31)
    assert np.array_equal(cpu.xnor_gemm_packed(Ap, Bp, n, threads=2, path=path), expected)


@pytest.mark.parametrize("path", HOST_PATHS)
def test_single_mismatch_at_each_position(path):
    """Column j of B differs from A's only row in element j: C[0, j] = n - 2 (every bit position once)."""
    n = 600
    A = np.ones((1, n), dtype=np.float32)
    B = np.ones((n, n), dtype=np.float32)
    B[np.arange(n), np.arange(n)] = -1.0
    assert np.array_equal(cpu.xnor_gemm(A, B, path=path), np.full((1, n), n - 2, np.float32))


@pytest.mark.parametrize("path", HOST_PATHS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 63), (5, 65), (4, 1000), (2, 4097)])
def test_pack_rows_and_cols_match_packbits(rng, path, shape):
    X = rng.standard_normal(shape).astype(np.float32)
    X[rng.random(shape) < 0.2] = 0.0
    X[rng.random(shape) < 0.05] = np.nan  # NaN >= 0 is false: packed as -1
    X[rng.random(shape) < 0.05] = -np.inf
    assert np.array_equal(cpu.pack_rows(X, path=path), reference_pack(X))
    assert np.array_equal(cpu.pack_cols(X.T.copy(), threads=2, path=path), reference_pack(X))


def test_out_receives_the_product_and_bad_out_is_one_clear_error(rng):
    A, B = random_inputs(rng, 5, 100, 7)
    out = np.full((5, 7), 123.0, dtype=np.float32)
    assert cpu.xnor_gemm(A, B, out=out) is out and np.array_equal(out, reference_gemm(A, B))
    out[:] = 0
    assert cpu.xnor_gemm_packed(cpu.pack_rows(A), cpu.pack_cols(B), 100, out=out) is out
    assert np.array_equal(out, reference_gemm(A, B))
    for bad in (np.empty((7, 5), np.float32), np.empty((5, 7), np.float64), np.empty((7, 5), np.float32).T):
        with pytest.raises(KernelError, match="out must be"):
            cpu.xnor_gemm(A, B, out=bad)


def test_measured_instruction_rates():
    """The register-only loops run and give plausible rates (more than 1e8 per second on any current core)."""
    rates = {which: cpu.measure_rate(which, threads=1, seconds=0.01) for which in cpu.RATES}
    assert (rates["popcnt512"] is not None) == ("avx512" in HOST_PATHS)
    assert (rates["add256"] is not None) == ("avx2" in HOST_PATHS)
    for rate in rates.values():
        assert rate is None or rate > 1e8


def test_tuning_names_the_cpu():
    info = cpu.tuning_info()
    vendor = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("vendor_id")),
                  "")
    if "avx512" in HOST_PATHS and vendor == "AuthenticAMD":
        assert info["uarch"].startswith("AMD Zen")
    if "avx512" in HOST_PATHS and vendor == "GenuineIntel":
        assert info["uarch"].startswith("Intel with AVX-512")
    assert info["task_rows"] % 24 == 0 and 0 < info["block_share"] <= 1 and info["l2_bytes"] > 0


# ------------------------------------------------------------------------------------------ AArch64 under qemu

ARM_PATHS = {"neon": 4, "portable": 2}
ARM_SHAPES = [(1, 1, 1), (3, 63, 5), (5, 65, 7), (4, 1984, 3), (9, 2000, 6), (13, 130, 33)]


@pytest.fixture(scope="module")
def arm_driver(tmp_path_factory):
    """The driver and xnor_cpu.c built for AArch64 (static, so qemu-aarch64-static needs no sysroot)."""
    for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64-static"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: {INSTALL_HINT}")
    binary = str(tmp_path_factory.mktemp("arm") / "xnor_cpu_driver")
    result = subprocess.run(["aarch64-linux-gnu-gcc", "-O3", "-static", "-pthread", "-std=gnu11", "-o", binary,
                             DRIVER_SOURCE, os.path.join(ROOT, "kernels", "xnor_cpu.c")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return binary


def run_arm(binary, path_code, A, B, threads=2, task_rows=0, block_share=0.0):
    m, n = A.shape
    k = B.shape[1]
    stdin = struct.pack("<3q", m, n, k) + A.astype("<f4").tobytes() + B.astype("<f4").tobytes()
    result = subprocess.run(["qemu-aarch64-static", binary, str(path_code), str(threads), str(task_rows),
                             repr(block_share)], input=stdin, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    out, words = result.stdout, (n + 63) // 64
    sizes = [16, 4 * m * k, 4 * m * k, 8 * m * words, 8 * k * words]
    assert len(out) == sum(sizes)
    parts, start = [], 0
    for size in sizes:
        parts.append(out[start:start + size])
        start += size
    status = np.frombuffer(parts[0], "<i4")
    fused, packed = (np.frombuffer(p, "<f4").reshape(m, k) for p in parts[1:3])
    Ap, Bp = np.frombuffer(parts[3], "<u8").reshape(m, words), np.frombuffer(parts[4], "<u8").reshape(k, words)
    return status, fused, packed, Ap, Bp


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(ARM_PATHS))
@pytest.mark.parametrize("shape", ARM_SHAPES)
def test_arm_gemm_and_packing_exact(rng, arm_driver, path, shape):
    A, B = random_inputs(rng, *shape)
    status, fused, packed, Ap, Bp = run_arm(arm_driver, ARM_PATHS[path], A, B)
    assert status.tolist() == [0, 0, 0, 0]
    expected = reference_gemm(A, B)
    assert np.array_equal(fused, expected)
    assert np.array_equal(packed, expected)
    assert np.array_equal(Ap, reference_pack(A))
    assert np.array_equal(Bp, reference_pack(B.T.copy()))


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(ARM_PATHS))
def test_arm_pipeline_with_many_blocks_exact(rng, arm_driver, path):
    A, B = random_inputs(rng, 50, 300, 41)
    status, fused, packed, _, _ = run_arm(arm_driver, ARM_PATHS[path], A, B, threads=2, task_rows=24,
                                          block_share=1e-9)
    assert status.tolist() == [0, 0, 0, 0]
    assert np.array_equal(fused, reference_gemm(A, B))
    assert np.array_equal(packed, reference_gemm(A, B))


@pytest.mark.slow  # a cross build and an emulator: part of make test, not of the fast selection
def test_arm_all_differ_does_not_wrap_byte_counters(arm_driver):
    n = 64 * 31 * 3 + 7  # three full spans of the NEON byte counters, then a ragged tail
    A = np.ones((2, n), dtype=np.float32)
    _, fused, packed, _, _ = run_arm(arm_driver, ARM_PATHS["neon"], A, -A.T.copy())
    assert np.array_equal(fused, np.full((2, 2), -n, np.float32))
    assert np.array_equal(packed, np.full((2, 2), -n, np.float32))


@pytest.mark.slow  # a cross build and an emulator: part of make test, not of the fast selection
def test_arm_build_has_no_x86_path(arm_driver):
    result = subprocess.run(["qemu-aarch64-static", arm_driver, "1", "1", "0", "0"], input=b"",
                            capture_output=True, timeout=60)
    assert result.returncode == 3 and b"not available" in result.stderr
