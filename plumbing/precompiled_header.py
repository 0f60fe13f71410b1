"""Precompiled headers for Theano's C modules: g++ stops parsing the same headers for every module (docs/speed.md
item 26, issue 10).

Every tensor module Theano generates starts with the same #include lines: Python.h, iostream and Theano's helper
(the CLinker's own), math.h and NumPy's arrayobject.h and arrayscalars.h (TensorType's), and in elementwise modules
vector and algorithm. Parsing them is about two thirds of g++'s time for a typical module (`-ftime-report`).

GCC looks for `Python.h.gch` in each include directory just before it looks for `Python.h` there (GCC manual,
"Using Precompiled Headers"). So for a module whose source starts with one of the BLOCKS below, g++ gets one more
include directory, searched first, holding a `Python.h.gch` compiled from exactly that block with the module's own
compile flags. The block's other #include lines then find their include guards set and add nothing: the module is
compiled from the same declarations, in the same order, and its machine code is the same (tested: disassembly).
Theano's cache keys, sources and flags do not change; only the g++ command line gains the directory.

Each header is built once per (block, flags) into <base_compiledir>/precompiled_headers/<hash>/, with the list of
files g++ read for it (-MD) and their sizes and modification times; it is rebuilt when one of them changed (a NumPy
upgraded in place, say). GCC itself ignores a header made by another compiler binary or with incompatible options,
and then reads Python.h as before. A header that fails to build is not used (and not tried again in this process).
`BINARYNET_PCH=0` switches this off.
"""
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading

from theano import config
from theano.gof import cmodule

from plumbing.switches import switch_on

_CORE = ("#include <Python.h>", "#include <iostream>", '#include "theano_mod_helper.h"', "#include <math.h>",
         "#include <numpy/arrayobject.h>", "#include <numpy/arrayscalars.h>")
# The longest first: a module uses the first block its source starts with.
BLOCKS = ("\n".join(_CORE + ("#include <vector>", "#include <algorithm>")) + "\n", "\n".join(_CORE) + "\n")
HEADER = "Python.h.gch"  # named after the block's first #include: GCC takes it in that line's place
_LINKER_ONLY = ("-shared", "-l", "-L", "-Wl,")
_READY = {}  # key -> directory holding a checked header, or None when building it failed in this process
_BUILDING = threading.Lock()


def enabled():
    return switch_on("BINARYNET_PCH") and bool(config.cxx)


def block_of(src_code):
    """The first of BLOCKS that `src_code` starts with, or None."""
    for block in BLOCKS:
        if src_code.startswith(block):
            return block
    return None


def compile_flags(preargs, include_dirs, hide_symbols=True):
    """The options Theano's compile_str passes g++ that matter for compiling (not linking) a module."""
    preargs = [p for p in preargs or () if not (config.cmodule.remove_gxx_opt and p.startswith("-O"))]
    flags = [config.cxx, "-g"] + preargs
    flags += ["-I" + d for d in [d for d in include_dirs or () if d] + cmodule.std_include_dirs()]
    if hide_symbols:
        flags.append("-fvisibility=hidden")
    return [f for f in flags if not f.startswith(_LINKER_ONLY)]


def root():
    return os.path.join(config.base_compiledir, "precompiled_headers")


def _key(block, flags):
    return hashlib.sha256("\0".join([block, *flags]).encode()).hexdigest()[:24]


def _read_dependencies(make_rule, own_source):
    """The files of a `g++ -MD` rule, without the target and our own block file."""
    text = make_rule.replace("\\\n", " ").split(":", 1)[1]
    paths = [p.replace("\0", " ") for p in text.replace("\\ ", "\0").split()]
    return [p for p in paths if p != own_source]


def _stamp(paths):
    """Each file's size and modification time (ns); None for a file that is gone."""
    stamps = {}
    for path in paths:
        try:
            info = os.stat(path)
            stamps[path] = [info.st_size, info.st_mtime_ns]
        except OSError:
            stamps[path] = None
    return stamps


def _current(directory):
    """True when `directory` holds a header whose files are unchanged since it was built."""
    try:
        with open(os.path.join(directory, "files.json")) as f:
            stamps = json.load(f)
    except (OSError, ValueError):
        return False
    return os.path.exists(os.path.join(directory, HEADER)) and _stamp(stamps) == stamps


def _build(block, flags, directory):
    """Compile `block` into `directory`/Python.h.gch, through a temporary directory renamed into place."""
    os.makedirs(root(), exist_ok=True)
    work = tempfile.mkdtemp(prefix="build-", dir=root())
    try:
        source = os.path.join(work, "block.hpp")
        with open(source, "w") as f:
            f.write(block)
        rule = os.path.join(work, "files.d")
        command = [*flags, "-x", "c++-header", source, "-o", os.path.join(work, HEADER), "-MD", "-MF", rule]
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if done.returncode:
            return False
        with open(rule) as f:
            stamps = _stamp(_read_dependencies(f.read(), source))
        with open(os.path.join(work, "files.json"), "w") as f:
            json.dump(stamps, f)
        if os.path.isdir(directory):  # stale: another process may be reading it, so move it aside first
            stale = tempfile.mkdtemp(prefix="stale-", dir=root())
            os.rename(directory, os.path.join(stale, "old"))
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(work, directory)
        except OSError:  # another process put one there meanwhile
            return _current(directory)
        work = None
        return True
    finally:
        if work:
            shutil.rmtree(work, ignore_errors=True)


def directory_for(block, flags):
    """The directory holding a current precompiled header of `block` for `flags`, built if needed; None if it
    cannot be built."""
    key = _key(block, flags)
    if key in _READY:
        return _READY[key]
    with _BUILDING:
        if key not in _READY:
            directory = os.path.join(root(), key)
            try:
                ok = _current(directory) or _build(block, flags, directory)
            except Exception:  # any failure only costs the speed-up: g++ then reads the headers themselves
                ok = False
            _READY[key] = directory if ok else None
    return _READY[key]


def wanted(src_code, preargs, include_dirs, hide_symbols=True):
    """(block, flags) of the header a module would use, or None when it would use none."""
    if not enabled():
        return None
    block = block_of(src_code)
    if block is None:
        return None
    return block, tuple(compile_flags(preargs, include_dirs, hide_symbols))


def header_first(directory, include_dirs):
    """`include_dirs` with `directory` (a precompiled header's, or None for none) searched first."""
    return ([directory] if directory else []) + list(include_dirs or ())


def include_dirs_with_header(src_code, preargs, include_dirs, hide_symbols=True):
    """`include_dirs` with the directory of the module's precompiled header first (built now if needed)."""
    want = wanted(src_code, preargs, include_dirs, hide_symbols)
    return header_first(directory_for(*want) if want else None, include_dirs)
