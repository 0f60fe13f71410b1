"""Compile a graph's C modules on all cores before Theano links it (docs/speed.md, issue 10).

Theano compiles the C module of each node when its linker makes the node's thunk, one g++ after the other; a cold
compile of a paper ConvNet is about a hundred modules at 0.6-0.7 s each while the other cores idle. `install()`
(called by plumbing/compat.py) wraps the VM linker's `make_all`. Before Theano's own loop over the nodes:

1. For each node (in the linker's order) whose op makes its thunk the default way, build the CLinker Theano would
   build (`Op.make_c_thunk`: the node alone, no_recycling empty as in `VM_Linker.make_all`), and take its cache key.
   Nodes whose key or source is already in the cache, nodes without C code and anything that raises are left to
   Theano.
2. Run Theano's own `compile_str` (the same source, module name, include and library directories, libraries and
   flags; `py_module=False`: nothing imported) for the missing modules on a thread pool, one per core, each into a
   private temporary directory outside the compile directory. g++ runs in a subprocess and releases the GIL.
3. Call Theano's `make_all`. Its serial path looks the key up, takes the compile lock, refreshes the cache (another
   process may have compiled the module meanwhile) and calls `compile_str` into a new cache directory of its own;
   the wrapped `compile_str` then moves the prebuilt `mod.cpp` and library there instead of running g++, and Theano
   imports the module and writes its key as usual. Whatever did not compile in step 2 (a g++ error, a node skipped)
   is compiled by Theano as before, with its own error message or Python fallback. Unused temporary directories are
   removed.

The cache thus holds exactly the modules (keys, sources, flags) a serial compile makes, and only Theano writes into
it, under its lock. `BINARYNET_PARALLEL_COMPILE=N` runs N g++ at once (default: one per core); 0 or 1 switches
this off.
"""
import concurrent.futures
import contextlib
import hashlib
import io
import os
import re
import shutil
import tempfile
import time

from theano import config
from theano.gof import cmodule, op, vm
from theano.gof.cc import CLinker, get_module_cache
from theano.gof.fg import FunctionGraph

from plumbing import precompiled_header
from plumbing.errors import UsageError


_ORIGINAL = {}
# Modules compiled ahead of Theano, by signature (see _signature): the temporary directory holding them.
_PREBUILT = {}
STATS = {"compiled": 0, "failed": 0, "used": 0, "seconds": 0.0}  # modules built / failed / taken by Theano


def workers():
    """How many g++ may run at once: BINARYNET_PARALLEL_COMPILE if set (0 or 1: Theano's serial compile only), else
    the number of cores this process may run on."""
    wish = os.environ.get("BINARYNET_PARALLEL_COMPILE", "")
    if wish.strip():
        try:
            return max(int(wish), 0)
        except ValueError:
            raise UsageError(f"BINARYNET_PARALLEL_COMPILE={wish!r} is not a number: set it to the number of g++ "
                             "processes to run at once (0 switches parallel compilation off)") from None
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def enabled():
    """True when more than one g++ may run at once and Theano has a C++ compiler."""
    return workers() > 1 and bool(config.cxx)


def _signature(module_name, src_code, include_dirs, lib_dirs, libs, preargs):
    """What makes two compile_str calls build the same library (everything but the location)."""
    digest = hashlib.sha256(src_code.encode()).hexdigest()
    return (module_name, digest, tuple(include_dirs or ()), tuple(lib_dirs or ()), tuple(libs or ()),
            tuple(preargs or ()))


def _default_thunk(node):
    """True when the node's op makes its thunk as Op.make_thunk does (a C thunk from a one-node CLinker)."""
    kind = type(node.op)
    return kind.make_thunk is op.Op.make_thunk and kind.make_c_thunk is op.Op.make_c_thunk


def _missing_module(node, storage_map, compute_map, cache):
    """compile_str's arguments for the node's module if Theano would compile it now, else None."""
    node.op.prepare_node(node, storage_map=storage_map, compute_map=compute_map, impl="c")
    linker = CLinker().accept(FunctionGraph(node.inputs, node.outputs), no_recycling=[])
    key = linker.cmodule_key()
    if key is None or key in cache.entry_from_key:
        return None
    for apply_node in linker.node_order:
        apply_node.op.prepare_node(apply_node, storage_map, None, "c")
    src_code = linker.get_src_code()
    if cmodule.get_module_hash(src_code, key) in cache.module_hash_to_key_data:
        return None
    return dict(module_name=linker.get_dynamic_module().code_hash, src_code=src_code, include_dirs=linker.header_dirs(),
                lib_dirs=linker.lib_dirs(), libs=linker.libraries(), preargs=linker.compile_args())


def _compile(args, header=None):
    """Build one module with Theano's compile_str into a fresh temporary directory; the directory, or None.
    `header`: the future of the module's precompiled header, used if it is ready (no waiting for it)."""
    location = tempfile.mkdtemp(prefix="binarynet-compile-")
    ready = header.result() if header is not None and header.done() else None
    include_dirs = precompiled_header.header_first(ready, args["include_dirs"])
    try:
        _ORIGINAL["compile_str"](location=location, py_module=False, **dict(args, include_dirs=include_dirs))
    except Exception:
        shutil.rmtree(location, ignore_errors=True)
        return None
    return location


def precompile(order, storage_map, compute_map):
    """Compile the missing C modules of the nodes in `order` on all cores; the signatures of the modules built."""
    start = time.time()
    cache = get_module_cache()
    jobs = {}
    headers = {}  # (block, flags) -> future of its precompiled header's directory
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers()) as pool:
        # compile_str prints only when g++ fails (and, if asked, g++'s warnings). A failed module is compiled again
        # by Theano, which then prints its own message: keep this pass quiet. The main thread only generates code
        # and waits here, so the redirection affects nothing else.
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            for node in order:
                if not _default_thunk(node):
                    continue
                try:
                    args = _missing_module(node, storage_map, compute_map, cache)
                except Exception:
                    continue
                if args is None:
                    continue
                signature = _signature(**args)
                if signature not in jobs and signature not in _PREBUILT:
                    want = precompiled_header.wanted(args["src_code"], args["preargs"], args["include_dirs"])
                    if want and want not in headers:  # queued before the modules that use it
                        headers[want] = pool.submit(precompiled_header.directory_for, *want)
                    jobs[signature] = pool.submit(_compile, args, headers.get(want))
            built = {signature: job.result() for signature, job in jobs.items()}
    failed = [signature for signature, location in built.items() if location is None]
    if failed:
        for path in re.findall(r"temporary file: (\S+)", printed.getvalue()):
            if os.path.basename(path).startswith("theano_compilation_error_"):
                with contextlib.suppress(OSError):
                    os.remove(path)
    else:
        print(printed.getvalue(), end="")  # g++'s warnings, if Theano's cmodule.compilation_warning asks for them
    for signature, location in built.items():
        if location:
            _PREBUILT[signature] = location
    STATS["compiled"] += len(built) - len(failed)
    STATS["failed"] += len(failed)
    STATS["seconds"] += time.time() - start
    return [signature for signature, location in built.items() if location]


def _compile_str(module_name, src_code, location=None, include_dirs=None, lib_dirs=None, libs=None, preargs=None,
                 py_module=True, hide_symbols=True):
    """Theano's compile_str, taking a module built by `precompile` instead of running g++ when there is one."""
    signature = _signature(module_name, src_code, include_dirs, lib_dirs, libs, preargs)
    prebuilt = _PREBUILT.pop(signature, None) if py_module and hide_symbols and location else None
    if prebuilt is None:
        include_dirs = precompiled_header.include_dirs_with_header(src_code, preargs, include_dirs, hide_symbols)
        return _ORIGINAL["compile_str"](module_name, src_code, location=location, include_dirs=include_dirs,
                                        lib_dirs=lib_dirs, libs=libs, preargs=preargs, py_module=py_module,
                                        hide_symbols=hide_symbols)
    try:
        library = f"{module_name}.{cmodule.get_lib_extension()}"
        for name in ("mod.cpp", library):
            shutil.move(os.path.join(prebuilt, name), os.path.join(location, name))
    finally:
        shutil.rmtree(prebuilt, ignore_errors=True)
    open(os.path.join(location, "__init__.py"), "w").close()
    STATS["used"] += 1
    return cmodule.dlimport(os.path.join(location, library))


def _discard_prebuilt(signatures):
    """Remove the temporary directories of modules Theano did not take (e.g. another process compiled them)."""
    for signature in signatures:
        location = _PREBUILT.pop(signature, None)
        if location:
            shutil.rmtree(location, ignore_errors=True)


def _make_all(self, profiler=None, input_storage=None, output_storage=None, storage_map=None):
    """VM_Linker.make_all, after compiling the graph's missing C modules in parallel."""
    if enabled() and self.c_thunks is not False:
        # Throw-away storage for prepare_node; Theano's make_all maps its own.
        order = self.schedule(self.fgraph)
        scratch = vm.link.map_storage(self.fgraph, order, None, None, None)[2]
        # Only this graph's leftovers are discarded: an op may compile an inner graph (scan) while Theano links
        # this one.
        built = precompile(order, scratch, {k: [k.owner is None] for k in scratch})
        try:
            return _ORIGINAL["make_all"](self, profiler, input_storage, output_storage, storage_map)
        finally:
            _discard_prebuilt(built)
    return _ORIGINAL["make_all"](self, profiler, input_storage, output_storage, storage_map)


def install():
    """Wrap VM_Linker.make_all and GCC_compiler.compile_str (once)."""
    if _ORIGINAL:
        return
    _ORIGINAL["make_all"] = vm.VM_Linker.make_all
    _ORIGINAL["compile_str"] = cmodule.GCC_compiler.compile_str
    vm.VM_Linker.make_all = _make_all
    cmodule.GCC_compiler.compile_str = staticmethod(_compile_str)
