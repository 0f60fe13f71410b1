"""CPU kernels (kernels/cpu.py, kernels/xnor_cpu.c) against NumPy references (ORIGINALS.md §4.1-4.3)."""
import os

import numpy as np
import pytest

from kernels import cpu
from kernels.cpu import KernelError


def cpuinfo_has_vpopcntdq():
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_vpopcntdq" in f.read().split()
    except OSError:
        return False


def code_paths():
    """Both paths where the CPU has AVX-512 VPOPCNTDQ; the avx512 path must then be available (no skipping)."""
    return ["avx512", "portable"] if cpuinfo_has_vpopcntdq() else ["portable"]


def sign_matrix(rng, shape, zeros=True):
    """Random +-1 float32 matrix; with zeros=True some entries are 0 (which must count as +1)."""
    x = np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)
    if zeros:
        x[rng.random(shape) < 0.1] = 0.0
    return x


def signs64(x):
    """Reference binarization: +1 where x >= 0, -1 elsewhere, in float64."""
    return np.where(x >= 0, 1.0, -1.0)


def reference_pack(x):
    """Bit j of word w of row r = [x[r, 64w + j] >= 0], built with np.packbits (little bit order)."""
    words = (x.shape[1] + 63) // 64
    bits = np.zeros((x.shape[0], words * 64), dtype=np.uint8)
    bits[:, :x.shape[1]] = x >= 0
    packed_bytes = np.packbits(bits, axis=1, bitorder="little")
    return np.ascontiguousarray(packed_bytes).view("<u8").astype(np.uint64)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_avx512_path_present_when_cpuinfo_says_so():
    has = cpuinfo_has_vpopcntdq()
    assert ("avx512" in cpu.available_paths()) == has
    assert cpu.cpu_features()["has_vpopcntdq"] == has
    assert cpu.available_paths()[-1] == "portable"


@pytest.mark.parametrize("path", code_paths())
@pytest.mark.parametrize("shape", [(1, 1), (3, 63), (2, 64), (5, 65), (7, 130), (17, 1000), (4, 4097)])
def test_pack_rows_matches_packbits(rng, shape, path):
    A = sign_matrix(rng, shape) * rng.random(shape).astype(np.float32)  # magnitudes must not matter
    assert np.array_equal(cpu.pack_rows(A, path=path), reference_pack(A))


@pytest.mark.parametrize("path", code_paths())
@pytest.mark.parametrize("shape", [(1, 1), (63, 3), (64, 17), (65, 5), (130, 300), (1000, 33)])
def test_pack_cols_is_pack_of_transpose(rng, shape, path):
    B = sign_matrix(rng, shape)
    assert np.array_equal(cpu.pack_cols(B, threads=2, path=path), reference_pack(B.T.copy()))


def test_pack_bits_by_hand():
    row = np.full((1, 70), -1.0, dtype=np.float32)
    row[0, [0, 5, 63, 64, 69]] = [0.0, 2.0, 0.5, -0.0, 1e-30]  # zero and negative zero both count as +1
    packed = cpu.pack_rows(row)
    assert packed.shape == (1, 2)
    assert int(packed[0, 0]) == (1 << 0) | (1 << 5) | (1 << 63)
    assert int(packed[0, 1]) == (1 << 0) | (1 << 5)  # padding bits 6..63 stay 0


SHAPES = [(1, 1, 1), (1, 64, 1), (3, 5, 2), (4, 63, 4), (5, 65, 3), (9, 64, 7), (13, 129, 17), (33, 511, 31),
          (8, 513, 8), (1, 300, 37), (37, 300, 1), (19, 4100, 23), (64, 1000, 64), (70, 2049, 45)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("path", code_paths())
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_xnor_gemm_exact(rng, m, n, k, path, threads):
    A, B = sign_matrix(rng, (m, n)), sign_matrix(rng, (n, k))
    C = cpu.xnor_gemm(A, B, threads=threads, path=path)
    assert C.dtype == np.float32 and C.shape == (m, k)
    assert np.array_equal(C, signs64(A) @ signs64(B))


@pytest.mark.parametrize("path", code_paths())
def test_xnor_gemm_sees_only_signs(rng, path):
    A = rng.standard_normal((21, 200)).astype(np.float32)
    B = rng.standard_normal((200, 11)).astype(np.float32)
    assert np.array_equal(cpu.xnor_gemm(A, B, path=path), signs64(A) @ signs64(B))


def test_xnor_gemm_packed_matches_reference_packing(rng):
    A, B = sign_matrix(rng, (6, 190)), sign_matrix(rng, (190, 9))
    C = cpu.xnor_gemm_packed(reference_pack(A), reference_pack(B.T.copy()), 190)
    assert np.array_equal(C, signs64(A) @ signs64(B))


def test_paths_and_thread_counts_agree_on_larger_product(rng):
    A, B = sign_matrix(rng, (150, 1500)), sign_matrix(rng, (1500, 130))
    expected = signs64(A) @ signs64(B)
    for path in code_paths():
        for threads in (1, 2, 3, None):
            assert np.array_equal(cpu.xnor_gemm(A, B, threads=threads, path=path), expected)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 17, 3), (16, 16, 16), (33, 70, 20), (50, 300, 40)])
@pytest.mark.parametrize("threads", [1, 2])
def test_baseline_gemm_matches_numpy(rng, m, n, k, threads):
    A = rng.standard_normal((m, n)).astype(np.float32)
    B = rng.standard_normal((n, k)).astype(np.float32)
    expected = A.astype(np.float64) @ B.astype(np.float64)
    assert np.allclose(cpu.baseline_gemm(A, B, threads=threads), expected, rtol=1e-5, atol=1e-4)


def test_baseline_and_xnor_identical_on_signs(rng):
    A, B = sign_matrix(rng, (40, 96), zeros=False), sign_matrix(rng, (96, 24), zeros=False)
    assert np.array_equal(cpu.baseline_gemm(A, B), cpu.xnor_gemm(A, B))


@pytest.mark.parametrize("call", [
    lambda: cpu.xnor_gemm(np.ones((2, 3)), np.ones((3, 2), np.float32)),              # float64
    lambda: cpu.xnor_gemm(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32)),  # inner mismatch
    lambda: cpu.baseline_gemm(np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)),
    lambda: cpu.baseline_gemm(np.ones(3, np.float32), np.ones((3, 2), np.float32)),   # 1-D
    lambda: cpu.pack_rows([[1.0, 2.0]]),                                              # not an array
    lambda: cpu.pack_cols(np.ones((3, 2), np.int32)),
    lambda: cpu.xnor_gemm_packed(np.zeros((2, 2), np.uint64), np.zeros((2, 1), np.uint64), 100),
    lambda: cpu.xnor_gemm_packed(np.zeros((2, 1), np.int64), np.zeros((2, 1), np.uint64), 10),
    lambda: cpu.xnor_gemm_packed(np.full((2, 1), 2 ** 40, np.uint64), np.zeros((2, 1), np.uint64), 10),
    lambda: cpu.xnor_gemm(np.ones((2, 3), np.float32), np.ones((3, 2), np.float32), threads=0),
    lambda: cpu.xnor_gemm(np.ones((2, 3), np.float32), np.ones((3, 2), np.float32), path="gpu"),
])
def test_bad_input_raises_kernel_error(call):
    with pytest.raises(KernelError) as info:
        call()
    assert "\n" not in str(info.value)


def test_avx512_request_runs_or_fails_with_one_line():
    A, B = np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)
    if "avx512" in cpu.available_paths():
        assert np.array_equal(cpu.xnor_gemm(A, B, path="avx512"), A @ B)
    else:
        with pytest.raises(KernelError, match="AVX-512"):
            cpu.xnor_gemm(A, B, path="avx512")


def test_library_is_cached(tmp_path, monkeypatch):
    first = cpu.library_path()
    assert os.path.exists(first) and cpu.library_path() == first
    monkeypatch.setenv("BINARYNET_KERNEL_CACHE", str(tmp_path))
    built = cpu.library_path()
    assert os.path.dirname(built) == str(tmp_path) and os.path.basename(built) == os.path.basename(first)
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(first)]  # no temporary files left


def test_missing_compiler_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    monkeypatch.setenv("BINARYNET_KERNEL_CACHE", str(tmp_path))
    with pytest.raises(KernelError, match="no C compiler"):
        cpu.library_path()


@pytest.fixture
def restore_tuning():
    """Tests that change the GEMM tuning put the values chosen for this CPU back afterwards."""
    saved = cpu.tuning_info()
    yield
    cpu.set_tuning(task_rows=saved["task_rows"], block_share=saved["block_share"], first_block=saved["first_block"],
                   overlap=saved["overlap"], prefetch=True)


@pytest.mark.parametrize("path", code_paths())
def test_packed_gemm_first_block_wider_than_later_blocks(rng, path, restore_tuning):
    """Block 0 of B wider than the later blocks (one panel each here): every panel of block 0 must be repacked, not
    left from the workspace of an earlier call (the earlier call on other inputs makes a stale panel visible)."""
    cpu.set_tuning(block_share=1e-6, first_block=0.5)
    for seed in (1, 2):
        A = sign_matrix(np.random.default_rng(seed), (13, 200))
        B = sign_matrix(np.random.default_rng(seed + 10), (200, 130))
        for threads in (1, 2):
            C = cpu.xnor_gemm_packed(cpu.pack_rows(A), cpu.pack_cols(B), 200, threads=threads, path=path)
            assert np.array_equal(C, signs64(A) @ signs64(B))
