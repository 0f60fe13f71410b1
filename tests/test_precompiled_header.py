"""plumbing/precompiled_header.py: a module compiled with its precompiled header is the same machine code; g++ takes
the header in place of the block's first #include; a header is rebuilt when a file it read changed; one that does
not build is not used; parallel compile uses a header only once it is ready; BINARYNET_PCH=0 switches it off."""
import concurrent.futures
import os
import subprocess

import pytest

from plumbing import compat  # noqa: F401  (first: Theano's flags)
from plumbing import parallel_compile, precompiled_header
from plumbing.compat import T, theano
from theano.gof import cmodule
from theano.gof.cc import CLinker
from theano.gof.fg import FunctionGraph

CORE = precompiled_header.BLOCKS[1]


@pytest.fixture
def own_root(tmp_path, monkeypatch):
    """Headers go to a fresh directory; nothing built earlier in this process counts."""
    monkeypatch.setattr(precompiled_header, "root", lambda: str(tmp_path / "headers"))
    monkeypatch.setattr(precompiled_header, "_READY", {})
    monkeypatch.setenv("BINARYNET_PCH", "1")
    return tmp_path / "headers"


def module_source():
    """compile_str's arguments for the C module of one fused elementwise node (x * 3 + y, clipped)."""
    x, y = T.matrix("x"), T.matrix("y")
    out = T.clip(x * 3 + y, -1, 1)
    fn = theano.function([x, y], out)
    node = fn.maker.fgraph.toposort()[-1]
    linker = CLinker().accept(FunctionGraph(node.inputs, node.outputs), no_recycling=[])
    return dict(module_name=linker.get_dynamic_module().code_hash, src_code=linker.get_src_code(),
                include_dirs=linker.header_dirs(), lib_dirs=linker.lib_dirs(), libs=linker.libraries(),
                preargs=linker.compile_args())


def machine_code(library):
    """objdump's disassembly of the library, without the line naming the file."""
    text = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    return text.split("\n", 2)[2]


def test_the_block_is_the_longest_of_the_known_leading_includes():
    assert precompiled_header.block_of(precompiled_header.BLOCKS[0] + "int x;\n") == precompiled_header.BLOCKS[0]
    assert precompiled_header.block_of(CORE + "#include <oneapi/dnnl/dnnl.h>\n") == CORE
    assert precompiled_header.block_of(CORE + "#include <vector>\n#include <omp.h>\n") == CORE
    assert precompiled_header.block_of("#include <Python.h>\n#include <omp.h>\n") is None
    assert precompiled_header.block_of("// comment\n" + CORE) is None


def test_a_module_compiled_with_its_header_is_the_same_machine_code(own_root, tmp_path):
    args = module_source()
    assert precompiled_header.block_of(args["src_code"]) == precompiled_header.BLOCKS[0]
    with_header = precompiled_header.include_dirs_with_header(args["src_code"], args["preargs"], args["include_dirs"])
    assert len(with_header) == len(args["include_dirs"]) + 1
    assert os.path.exists(os.path.join(with_header[0], "Python.h.gch"))
    compile_str = parallel_compile._ORIGINAL["compile_str"]
    libraries = []
    for name, include_dirs in (("plain", args["include_dirs"]), ("header", with_header)):
        (tmp_path / name).mkdir()
        compile_str(location=str(tmp_path / name), py_module=False, **dict(args, include_dirs=include_dirs))
        libraries.append(tmp_path / name / f"{args['module_name']}.{cmodule.get_lib_extension()}")
    assert machine_code(libraries[0]) == machine_code(libraries[1])
    # g++ -H marks a precompiled header it used with "!", a header it read with "."
    flags = precompiled_header.compile_flags(args["preargs"], with_header)
    shown = subprocess.run(flags + ["-fsyntax-only", "-H", str(tmp_path / "header" / "mod.cpp")],
                           capture_output=True, text=True).stderr.splitlines()
    assert "! " + os.path.join(with_header[0], "Python.h.gch") in shown
    assert not [line for line in shown if line.startswith(". ") and line.endswith("/Python.h")]


def exit_code_of(header_dir, tmp_path):
    """Build and run `int main() { return MINE; }` after #include <Python.h>, which only the header can answer."""
    source = tmp_path / "main.cpp"
    source.write_text("#include <Python.h>\nint main() { return MINE; }\n")
    subprocess.run([theano.config.cxx, "-I" + header_dir, str(source), "-o", str(tmp_path / "main")], check=True)
    return subprocess.run([str(tmp_path / "main")]).returncode


def test_a_header_is_rebuilt_when_a_file_it_read_changed(own_root, tmp_path, monkeypatch):
    mine = tmp_path / "include" / "mine.h"
    mine.parent.mkdir()
    mine.write_text("#define MINE 3\n")
    block, flags = '#include "mine.h"\n', (theano.config.cxx, "-I" + str(mine.parent))
    first = precompiled_header.directory_for(block, flags)
    assert exit_code_of(first, tmp_path) == 3
    assert precompiled_header.directory_for(block, flags) == first  # this process: checked once
    monkeypatch.setattr(precompiled_header, "_READY", {})  # a new process
    assert precompiled_header.directory_for(block, flags) == first
    mine.write_text("#define MINE 42\n")
    monkeypatch.setattr(precompiled_header, "_READY", {})
    again = precompiled_header.directory_for(block, flags)
    assert again == first and exit_code_of(again, tmp_path) == 42
    assert sorted(os.listdir(own_root)) == [os.path.basename(first)]  # no build or stale directories left


def test_a_header_that_does_not_build_is_not_used(own_root, monkeypatch):
    block, flags = "#include <no_such_header_anywhere.h>\n", (theano.config.cxx,)
    assert precompiled_header.directory_for(block, flags) is None
    assert os.listdir(own_root) == []
    calls = []
    monkeypatch.setattr(precompiled_header, "_build", lambda *args: calls.append(args))
    assert precompiled_header.directory_for(block, flags) is None and calls == []  # not tried again


def test_any_failure_while_building_only_costs_the_header(own_root, monkeypatch):
    def broken(*args):
        raise ValueError("unreadable dependency list")
    monkeypatch.setattr(precompiled_header, "_build", broken)
    source = precompiled_header.BLOCKS[1] + "int x;\n"
    assert precompiled_header.include_dirs_with_header(source, [], ["/inc"]) == ["/inc"]


def test_parallel_compile_uses_a_header_only_once_it_is_ready(monkeypatch):
    seen = []
    monkeypatch.setitem(parallel_compile._ORIGINAL, "compile_str", lambda **kwargs: seen.append(kwargs["include_dirs"]))
    args = dict(module_name="m", src_code=CORE, include_dirs=["/inc"], lib_dirs=[], libs=[], preargs=[])
    ready, pending = concurrent.futures.Future(), concurrent.futures.Future()
    ready.set_result("/headers/abc")
    for header in (ready, pending, None):
        location = parallel_compile._compile(args, header)
        os.rmdir(location)
    assert seen == [["/headers/abc", "/inc"], ["/inc"], ["/inc"]]


def test_the_switch(monkeypatch):
    source = precompiled_header.BLOCKS[0] + "int x;\n"
    monkeypatch.setenv("BINARYNET_PCH", "0")
    assert precompiled_header.wanted(source, [], ["/inc"]) is None
    assert precompiled_header.include_dirs_with_header(source, [], ["/inc"]) == ["/inc"]
    monkeypatch.setenv("BINARYNET_PCH", "1")
    block, flags = precompiled_header.wanted(source, ["-O2"], ["/inc"])
    assert block == precompiled_header.BLOCKS[0] and flags[:3] == (theano.config.cxx, "-g", "-O2")
    assert "-I/inc" in flags and flags[-1] == "-fvisibility=hidden"
