"""The GPU host code (kernels/gpu.py, benchmark.py's GPU part, binary_inference's GPU inference) run end to end
through the PyCUDA stand-in (tests/fake_pycuda): the exact kernels/binary_kernels.cu executes on the CPU, cuBLAS is
a C library with cuBLAS's ABI, and the driver rejects what PyCUDA and CUDA would. Results are compared exactly
with NumPy; inputs are ±1 or multiples of 1/64, so every float sum is exact whatever its order.

Also: every cuBLAS symbol the binding uses is exported by the real cuBLAS 12 / 13 libraries of the PyPI wheels
(test_real_cublas_exports_the_bound_symbols; see its text for how the libraries are provided).
"""
import ctypes
import ctypes.util
import glob
import os
import shutil
import threading

import numpy as np
import pytest

from kernels import gpu
from tests import fake_pycuda
from tests.fake_pycuda import driver as fake


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fake_cuda")


@pytest.fixture
def machine(monkeypatch, build_dir):
    """Install the stand-in with a given machine (devices, capability, limits, memory); one sm_75 GPU by default."""
    def install(**config):
        return fake_pycuda.install(monkeypatch, build_dir, **config)
    yield install
    assert not fake.Context.live, "a test left a CUDA context retained"
    if fake._state["library"] is not None:
        assert fake.library().fake_bytes_in_use() == 0, "a test leaked device memory"


def signs(X):
    return np.where(np.asarray(X) >= 0, 1.0, -1.0)


def dyadic(rng, shape):
    """Multiples of 1/64 in [-1, 1], some exactly 0 (which counts as +1)."""
    return (rng.integers(-64, 65, shape) / 64.0).astype(np.float32)


SHAPES = [(1, 1, 1), (37, 70, 45), (17, 33, 16), (5, 100, 3), (40, 64, 20)]


# ----------------------------------------------------------------------------- availability: one line, no traceback

def test_no_driver_one_line(monkeypatch):
    fake_pycuda.without_driver(monkeypatch)
    assert gpu.gpu_status() == (False, gpu.NO_DRIVER)
    with pytest.raises(gpu.GpuUnavailable) as caught:
        gpu.GpuKernels()
    assert str(caught.value) == gpu.NO_DRIVER


def test_no_device_one_line(machine, capsys):
    machine(devices=0)
    ok, message = gpu.gpu_status()
    assert not ok and "no CUDA-capable device" in message and "\n" not in message
    with pytest.raises(gpu.GpuUnavailable, match="no CUDA-capable device"):
        gpu.GpuKernels()
    assert gpu.main([]) == 1
    assert capsys.readouterr().err == f"GPU unavailable: {message}\n"


def test_missing_cublas_one_line(machine, monkeypatch):
    machine()
    monkeypatch.setattr(gpu, "cublas_candidates", lambda: ["/nonexistent/libcublas.so.12"])
    ok, message = gpu.gpu_status()
    assert not ok and message.startswith("cuBLAS 12 or 13 not found") and "pip install" in message


def test_library_without_cublas_symbols_is_refused(machine, monkeypatch):
    machine()
    other = ctypes.util.find_library("m")
    monkeypatch.setattr(gpu, "cublas_candidates", lambda: [other])
    ok, message = gpu.gpu_status()
    assert not ok and "lacks cublasCreate_v2, cublasSgemm_v2, cublasDestroy_v2" in message


def test_cublas_handle_failure_releases_the_context(machine):
    machine()
    fake.library().fake_set_devices(0)  # the driver saw a device, cuBLAS cannot initialize on it
    with pytest.raises(gpu.GpuUnavailable, match=r"cublasCreate_v2 failed: status 1 \(not initialized"):
        gpu.GpuKernels()
    assert not fake._stack()


# ----------------------------------------------------------------------------- products, exact

@pytest.mark.parametrize("m, n, k", SHAPES)
def test_products_equal_numpy(machine, m, n, k):
    machine()
    rng = np.random.default_rng(m * 10000 + n * 100 + k)
    A, B = rng.standard_normal((m, n)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    A[0, 0] = 0.0
    expected = signs(A) @ signs(B)
    with gpu.GpuKernels() as session:
        assert session.arch == 75
        np.testing.assert_array_equal(session.xnor_gemm(A, B), expected)
        np.testing.assert_array_equal(session.baseline_gemm(signs(A), signs(B)), expected)
        np.testing.assert_array_equal(session.cublas_gemm(signs(A), signs(B)), expected)
        Ad, Bd = dyadic(rng, (m, n)), dyadic(rng, (n, k))
        np.testing.assert_array_equal(session.cublas_gemm(Ad, Bd), Ad.astype(np.float64) @ Bd)


def test_launches_are_split_at_the_grid_limits(machine):
    """With gridDim.x <= 2 and gridDim.y <= 1 every product still equals NumPy, in several launches, none beyond
    the limits (the stand-in refuses those, as the driver does)."""
    machine(limits={"MAX_GRID_DIM_X": 2, "MAX_GRID_DIM_Y": 1})
    rng = np.random.default_rng(1)
    A, B = rng.standard_normal((37, 70)).astype(np.float32), rng.standard_normal((70, 30)).astype(np.float32)
    with gpu.GpuKernels() as session:
        np.testing.assert_array_equal(session.xnor_gemm(A, B), signs(A) @ signs(B))
        np.testing.assert_array_equal(session.baseline_gemm(signs(A), signs(B)), signs(A) @ signs(B))
    launches = {name: [grid for n, grid, _ in fake.LAUNCHES if n == name] for name in gpu.KERNEL_NAMES[:4]}
    assert len(launches["xnor_gemm"]) == 3 and len(launches["baseline_gemm"]) == 3  # ceil(37 / 16) row chunks
    assert len(launches["pack_rows"]) == 1 and len(launches["pack_cols"]) == 1
    assert all(g[0] <= 2 and g[1] <= 1 for grids in launches.values() for g in grids)


def test_the_stand_in_refuses_a_launch_beyond_the_limit(machine):
    machine(limits={"MAX_GRID_DIM_Y": 1})
    with gpu.GpuKernels() as session:
        a = session.alloc((32, 1), np.uint32)
        c = session.alloc((32, 1))
        with pytest.raises(fake.LogicError, match="cuLaunchKernel failed: invalid argument"):
            session._kernels["xnor_gemm"](a.row(0), a.row(0), c.row(0), np.int32(32), np.int32(1), np.int32(1),
                                          np.int32(1), grid=(1, 2), block=(16, 16, 1))


@pytest.mark.parametrize("limits, shape, fragment", [
    ({"MAX_GRID_DIM_X": 1}, ((2, 2100), (2100, 3)), "pack_rows: one row needs 2 blocks"),
    ({"MAX_GRID_DIM_X": 2}, ((2, 10), (10, 40)), "xnor_gemm: 40 columns need 3 blocks"),
])
def test_unsplittable_launch_is_refused_in_one_line(machine, limits, shape, fragment):
    machine(limits=limits)
    with gpu.GpuKernels() as session:
        with pytest.raises(gpu.KernelInputError, match=fragment) as caught:
            session.xnor_gemm(np.ones(shape[0], np.float32), np.ones(shape[1], np.float32))
        assert "\n" not in str(caught.value)
        assert not session._allocations  # the product's temporaries were freed despite the error


def test_real_grid_limit_plan():
    """m = 1 048 561 rows needs 65 536 blocks along y: two launches under the real limit of 65 535."""
    rows = gpu.rows_per_gemm_launch("xnor_gemm", 4096, 2 ** 31 - 1, 65535)
    assert rows == 65535 * 16 and gpu.row_chunks(1048561, rows) == [(0, 1048560), (1048560, 1)]


def test_kernel_arguments_follow_pycuda_rules(machine):
    """PyCUDA packs NumPy scalars and allocations only; a Python int is a TypeError (the stand-in also checks
    the kernel's parameter types, which a real GPU would misread silently)."""
    machine()
    with gpu.GpuKernels() as session:
        a = session.alloc((4, 32))
        out = session.alloc((4, 1), np.uint32)
        with pytest.raises(TypeError, match=r"invalid type on parameter #2 \(0-based\)"):
            session._kernels["pack_rows"](a.allocation, out.allocation, 4, np.int32(32), grid=(1,), block=(64, 1, 1))
        with pytest.raises(TypeError, match="parameter #2 of pack_rows is a 4-byte integer"):
            session._kernels["pack_rows"](a.allocation, out.allocation, np.int64(4), np.int32(32), grid=(1,),
                                          block=(64, 1, 1))


# ----------------------------------------------------------------------------- compilation paths

def test_without_nvcc_the_kernels_come_from_nvrtc(machine, monkeypatch):
    machine()
    monkeypatch.setenv("PATH", "/nonexistent")
    rng = np.random.default_rng(2)
    A, B = rng.standard_normal((9, 40)).astype(np.float32), rng.standard_normal((40, 7)).astype(np.float32)
    with gpu.GpuKernels() as session:
        assert session.compiler == "nvrtc"
        np.testing.assert_array_equal(session.xnor_gemm(A, B), signs(A) @ signs(B))


def test_paper_gpu_sm50_uses_nvrtc_because_nvcc_is_too_new(machine):
    machine(capability=(5, 0), name="GeForce GTX 750 (stand-in)")
    with gpu.GpuKernels() as session:
        assert (session.arch, session.compiler) == (50, "nvrtc")
        np.testing.assert_array_equal(session.xnor_gemm(-np.ones((3, 5), np.float32), np.ones((5, 2), np.float32)),
                                      np.full((3, 2), -5.0))


def test_compile_failure_one_line_and_nothing_left(machine, monkeypatch, tmp_path):
    machine()
    broken = tmp_path / "binary_kernels.cu"
    broken.write_text(gpu.KERNEL_SOURCE.read_text().replace("bits |= 1u << j;", "bits |= 1u << ;", 1))
    monkeypatch.setattr(gpu, "KERNEL_SOURCE", broken)
    with pytest.raises(gpu.KernelCompileError) as caught:
        gpu.GpuKernels()
    message = str(caught.value)
    reasons = ["NVRTC compile failed for sm_75"] + (["nvcc failed for sm_75"] if shutil.which("nvcc") else [])
    assert "\n" not in message and all(reason in message for reason in reasons)
    assert not fake._stack()


def test_cubin_for_another_gpu_is_a_one_line_error(machine, monkeypatch):
    machine(capability=(8, 6))
    monkeypatch.setattr(gpu, "compile_for_device", lambda arch: ("nvcc", gpu.compile_cubin(75)))
    with pytest.raises(gpu.KernelCompileError, match="the sm_86 cubin from nvcc does not load") as caught:
        gpu.GpuKernels()
    assert "no kernel image is available" in str(caught.value) and not fake._stack()


# ----------------------------------------------------------------------------- ownership of the context

def test_with_block_releases_everything(machine):
    machine()
    with gpu.GpuKernels() as session:
        session.upload(np.ones((3, 3), np.float32))  # left for close() to free
        assert len(fake.Context.live) == 1 and len(fake._stack()) == 1
    assert not fake.Context.live and not fake._stack() and fake.library().fake_bytes_in_use() == 0
    session.close()  # idempotent
    with pytest.raises(gpu.GpuUsageError, match="closed"):
        session.cublas_gemm(np.ones((2, 2)), np.ones((2, 2)))


def test_session_refuses_other_threads(machine):
    machine()
    outcome = {}
    with gpu.GpuKernels() as session:
        def use():
            for name, call in (("use", lambda: session.xnor_gemm(np.ones((2, 2)), np.ones((2, 2)))),
                               ("close", session.close)):
                try:
                    call()
                except gpu.GpuUsageError as error:
                    outcome[name] = str(error)
        worker = threading.Thread(target=use)
        worker.start()
        worker.join()
        assert np.array_equal(session.xnor_gemm(np.ones((2, 2)), np.ones((2, 2))), np.full((2, 2), 2.0))
    assert set(outcome) == {"use", "close"} and all("another thread" in text for text in outcome.values())


def test_exit_hook_closes_open_sessions_of_this_thread(machine):
    machine()
    session = gpu.GpuKernels()
    session.upload(np.ones(4, np.float32))
    gpu._close_open_sessions()
    assert session._closed and not fake.Context.live and fake.library().fake_bytes_in_use() == 0


def test_out_of_device_memory_is_one_line(machine):
    machine(memory=64 * 1024)
    with gpu.GpuKernels() as session:
        with pytest.raises(gpu.KernelInputError, match="out of device memory") as caught:
            session.alloc((100, 1000))
        assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- inference on the device

WIDTHS = (37, 40, 33, 10)


def small_network(rng):
    """Weights, batch norms (rows b, mean, scale, beta; one scale 0, some negative) for WIDTHS."""
    weights, bn = [], []
    for fan_in, units in zip(WIDTHS[:-1], WIDTHS[1:]):
        W = rng.uniform(-1, 1, (fan_in, units)).astype(np.float32)
        W[0, 0] = 0.0
        scale = rng.normal(0.3, 0.3, units).astype(np.float32)
        scale[1] = 0.0
        b, mean, beta = (rng.normal(0, 1, units).astype(np.float32) for _ in range(3))
        weights.append(W)
        bn.append(np.stack([b, mean, scale, beta]))
    return weights, bn


def reference_network(weights, bn, X):
    """float32 batch norm in the §1.7.2 order on exact products; (outputs, predictions)."""
    a = X.astype(np.float64)
    for k, (W, (b, mean, scale, beta)) in enumerate(zip(weights, bn)):
        s = (a @ signs(W)).astype(np.float32)
        y = ((s + b) - mean) * scale + beta
        a = signs(y) if k < len(weights) - 1 else y
    return a, np.argmax(a, axis=1)


@pytest.mark.parametrize("product", ["xnor", "blas", "baseline"])
@pytest.mark.parametrize("limits", [{}, {"MAX_GRID_DIM_X": 3, "MAX_GRID_DIM_Y": 1}])
def test_network_on_the_device_equals_numpy(machine, product, limits):
    machine(limits=limits)
    rng = np.random.default_rng(3)
    weights, bn = small_network(rng)
    X = dyadic(rng, (21, WIDTHS[0]))
    outputs, predictions = reference_network(weights, bn, X)
    with gpu.GpuKernels() as session:
        network = gpu.GpuNetwork(session, weights, bn, product)
        np.testing.assert_array_equal(network.predict(X), predictions)
        timing = network.time(X[:13], repeats=3, warmup=1)
        np.testing.assert_array_equal(timing["outputs"], outputs[:13])
        assert 0 < timing["min"] <= timing["median"] and timing["upload"] > 0 and timing["download"] > 0
        network.free()
    launched = {name for name, _, _ in fake.LAUNCHES}
    assert ("bn_sign_pack_rows" in launched) == (product == "xnor") and "bn_rows" in launched


def test_network_keeps_weights_resident(machine):
    """Weights are uploaded (and packed) once; a prediction uploads only the inputs."""
    machine()
    rng = np.random.default_rng(4)
    weights, bn = small_network(rng)
    with gpu.GpuKernels() as session:
        network = gpu.GpuNetwork(session, weights, bn, "xnor")
        network.predict(dyadic(rng, (5, WIDTHS[0])))
        packs = sum(name == "pack_cols" for name, _, _ in fake.LAUNCHES)
        copies = []
        original = fake.memcpy_htod
        fake.memcpy_htod = lambda dest, src: copies.append(np.asarray(src).shape) or original(dest, src)
        try:
            network.predict(dyadic(rng, (5, WIDTHS[0])))
        finally:
            fake.memcpy_htod = original
        assert packs == 2 and sum(name == "pack_cols" for name, _, _ in fake.LAUNCHES) == 2
        assert copies == [(5, WIDTHS[0])]
        network.free()


def test_binary_inference_evaluate_on_the_gpu(machine, capsys):
    import binary_inference as bi
    machine()
    rng = np.random.default_rng(5)
    weights, bn = small_network(rng)
    blocks = [bi.Block(W, b, beta, np.ones_like(b), mean, scale) for W, (b, mean, scale, beta) in zip(weights, bn)]
    X = dyadic(rng, (30, WIDTHS[0]))
    _, expected = reference_network(weights, [np.stack([b.b, b.mean, b.scale, b.beta]) for b in blocks], X)
    results = bi.evaluate(blocks, X, expected, ["blas", "baseline", "xnor"], device="gpu", batch_size=16)
    assert all(np.array_equal(r["predictions"], expected) and r["error"] == 0.0 for r in results.values())
    rows = bi.gpu_inference_report(blocks, X, expected, repeats=2)
    assert [r["differ"] for r in rows] == [0, 0]
    assert "XNOR, fused BN+sign+pack" in capsys.readouterr().out


def test_benchmark_gpu_rows_and_module_entry(machine, capsys):
    import benchmark
    machine()
    args = benchmark.build_parser().parse_args(["--device", "gpu", "--sizes", "20x70x9", "--repeats", "2"])
    rows = benchmark.run_gpu(benchmark.parse_sizes(args.sizes), args)
    assert len(rows) == 4 and all(r["agrees"] and 0 < r["min"] <= r["seconds"] for r in rows)
    assert benchmark.main(["--device", "gpu", "--sizes", "17x33x5", "--repeats", "1", "--warmup", "0"]) == 0
    assert gpu.main(["--time", "16", "40", "3"]) == 0
    out = capsys.readouterr().out
    assert "cuBLAS sgemm" in out and "agree        True" in out


# ----------------------------------------------------------------------------- the real cuBLAS libraries

def real_cublas_libraries():
    """libcublas.so.12 / .13 from unpacked nvidia-cublas wheels under $BINARYNET_CUBLAS_WHEELS (see docs/runtime.md:
    pip download nvidia-cublas-cu12 ... && unzip), or installed ones found by kernels.gpu."""
    root = os.environ.get("BINARYNET_CUBLAS_WHEELS")
    found = sorted(glob.glob(os.path.join(root, "**", "libcublas.so.1[23]"), recursive=True)) if root else []
    return found or [path for path in gpu.cublas_candidates()[:-2] if os.path.exists(path)]


def test_real_cublas_exports_the_bound_symbols():
    """Every function the binding uses is exported by cuBLAS 12 and 13, and without a GPU handle creation fails
    with a status (not a crash). Needs the wheels' libraries (about 500 MB each, so not in requirements.txt;
    `bash scripts/cublas_libraries.sh` fetches them): skipped, with this reason shown, when none is provided, except
    where BINARYNET_REQUIRE_REAL_CUBLAS=1 (CI sets it) asks for both majors."""
    libraries = real_cublas_libraries()
    if os.environ.get("BINARYNET_REQUIRE_REAL_CUBLAS") == "1":
        majors = sorted({path.rsplit(".", 1)[-1] for path in libraries})
        assert majors == ["12", "13"], f"need libcublas.so.12 and .13 under $BINARYNET_CUBLAS_WHEELS, found {libraries}"
    if not libraries:
        pytest.skip("no real cuBLAS library here: run bash scripts/cublas_libraries.sh DIR and set "
                    "BINARYNET_CUBLAS_WHEELS=DIR (docs/runtime.md)")
    for path in libraries:
        library = ctypes.CDLL(path)
        assert all(hasattr(library, name) for name in gpu.CUBLAS_FUNCTIONS), path
        binding = gpu.Cublas(path)
        with pytest.raises(gpu.GpuUnavailable, match="cublasCreate_v2 failed: status"):
            binding.create()


# ----------------------------------------------------------------------------- the remaining error paths

def test_bad_device_ordinal_and_failed_push_are_one_line(machine, monkeypatch):
    machine()
    with pytest.raises(gpu.GpuUnavailable, match="cannot open CUDA device 3: cuDeviceGet failed: invalid device"):
        gpu.GpuKernels(device=3)

    def refuse(self):
        raise fake.LogicError("cuCtxPushCurrent failed: out of memory")
    monkeypatch.setattr(fake.Context, "push", refuse)
    with pytest.raises(gpu.GpuUnavailable, match="cannot make CUDA device 0 current"):
        gpu.GpuKernels()
    assert not fake.Context.live  # the retained context was released


def test_driver_reporting_no_devices(machine, monkeypatch):
    machine()
    monkeypatch.setattr(fake.Device, "count", staticmethod(lambda: 0))
    assert gpu.gpu_status() == (False, "NVIDIA driver found but it reports 0 CUDA devices; use --device cpu")


def test_no_compiler_at_all_is_one_line(machine, monkeypatch):
    machine()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(gpu.sys, "path", [])
    monkeypatch.setattr(gpu.ctypes.util, "find_library", lambda name: None)
    with pytest.raises(gpu.KernelCompileError, match="nvcc not found on PATH"):
        gpu.compile_cubin(75, "nvcc")
    with pytest.raises(gpu.KernelCompileError) as caught:
        gpu.GpuKernels()
    assert str(caught.value) == ("no compiler could build binary_kernels.cu for sm_75: NVRTC 12 not found: pip "
                                 f"install {gpu.NVRTC_PIP}")


def test_compiler_choice_and_bad_names():
    assert gpu.compile_cubin("sm_75")[:4] == b"\x7fELF"  # 'auto' picks nvcc for sm_75, NVRTC below
    with pytest.raises(gpu.KernelCompileError, match="unknown compiler 'clang'"):
        gpu.compile_cubin(75, "clang")
    with pytest.raises(gpu.KernelCompileError, match="bad GPU architecture 'sm_x'"):
        gpu.compile_cubin("sm_x")


def test_bad_arguments_are_one_line(machine, capsys):
    machine()
    with pytest.raises(gpu.KernelInputError, match="too large for 32-bit kernel indices"):
        gpu.check_operands(np.broadcast_to(np.float32(1), (2 ** 16, 2 ** 15)), np.ones((2 ** 15, 1), np.float32))
    rng = np.random.default_rng(6)
    weights, bn = small_network(rng)
    with gpu.GpuKernels() as session:
        with pytest.raises(gpu.KernelInputError, match="need repeats >= 1"):
            session.time_kernels(4, 4, 4, repeats=0)
        with pytest.raises(gpu.KernelInputError, match="need repeats >= 1"):
            session.time_events(lambda: None, 1, -1)
        with pytest.raises(gpu.KernelInputError, match="unknown product 'fast'"):
            gpu.GpuNetwork(session, weights, bn, "fast")
        network = gpu.GpuNetwork(session, weights, bn)
        with pytest.raises(gpu.KernelInputError, match="inputs have 5 features, the network expects 37"):
            network.predict(np.ones((2, 5), np.float32))
        network.free()
    assert gpu.main(["--time", "4", "x", "4"]) == 2
    assert gpu.main(["--time", "0", "4", "4"]) == 1
    err = capsys.readouterr().err
    assert "usage: python -m kernels.gpu [--time M N K]" in err and "error: empty operand" in err
