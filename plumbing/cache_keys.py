"""Compile-cache keys that let Theano reuse its compiled C modules across processes (docs/speed.md, items 17, 20).

1. The same key for Theano's DimShuffle in every process.

Theano finds a compiled C module by a key that holds each op's `c_code_cache_version`. Ops whose C code lives in a
file (`COp`; in our graphs only DimShuffle) take `hash(tuple(code strings))` as their version, and Python randomizes
string hashes per process (PYTHONHASHSEED). So every new process made new keys for every DimShuffle module: Theano
then generated the module's source again, found it compiled already, and appended the new key to the module's
`key.pkl`. Those files only grew: after a day of test and training runs here, 2,800 `key.pkl` files held 700 MB,
the DimShuffle ones up to 170 keys each, and every Theano process unpickled all of them at its first compile (RSS
102 MB -> 1,250 MB, and seconds of start-up).

The replacement takes the first 8 bytes of the SHA-256 of the same code strings: a version that changes when the
code changes, like Theano's, and is equal in every process. Caches written before keep their extra keys until the
cache directory is deleted once (`rm -rf ~/.cache/binarynet-archive/theano`, or $BINARYNET_THEANO_CACHE).

2. A version for modules of ops without parameters. `CLinker.cmodule_key_` collects, for every node, the op's
`c_code_cache_version`, the types' versions and the op's `__props__`, and calls the module unversioned when any of
them is empty. An op without parameters has `__props__ = ()`, which is empty, so every module holding one (in our
graphs `Dot22`, `Alloc` and `ScalarFromTensor`, all with versioned C code) was compiled again by g++ in every
process, into a temporary directory deleted at exit: about 0.5 s of every warm start on the main thread (constant
folding of `ScalarFromTensor`) and more on the second core. The replacement keeps Theano's key when it is versioned
and otherwise recomputes the version with NO_PROPS in place of an empty `__props__`: still unversioned when an op's
or a type's own version is empty.

`install()` is called by plumbing/compat.py, before any graph is compiled.
"""
import hashlib

from theano.gof import cc
from theano.gof import op as gof_op

THEANOS = {"c_code_cache_version": gof_op.COp.c_code_cache_version,  # kept for the tests
           "cmodule_key_": cc.CLinker.cmodule_key_}
NO_PROPS = ("binarynet-archive: op without parameters",)


def stable_code_version(self):
    """COp.c_code_cache_version with a hash of the code that does not depend on the process."""
    digest = hashlib.sha256("\0".join(self.func_codes).encode("utf-8")).digest()
    version = (int.from_bytes(digest[:8], "big", signed=True),)
    if hasattr(self, "params_type"):
        version += (self.params_type.c_code_cache_version(),)
    return version


def module_versions(linker, fgraph):
    """The version part of Theano's module key (CLinker.cmodule_key_, same order), an empty `__props__` counted as
    NO_PROPS; None when an op's or a type's own version is empty."""
    versions = []
    for node in linker.schedule(fgraph):
        if hasattr(node.op, "c_code_cache_version_apply"):
            versions.append(node.op.c_code_cache_version_apply(node))
        if hasattr(node.op, "__props__"):
            versions.append(node.op.__props__ or NO_PROPS)
        versions.extend(variable.type.c_code_cache_version() for variable in node.inputs)
        versions.extend(variable.type.c_code_cache_version() for variable in node.outputs)
    return tuple(versions) if all(versions) else None


def module_key(self, fgraph, no_recycling, *args, **kwargs):
    """CLinker.cmodule_key_ with a version for modules that were unversioned only by an op without parameters."""
    key = THEANOS["cmodule_key_"](self, fgraph, no_recycling, *args, **kwargs)
    if key is None or key[0]:
        return key
    versions = module_versions(self, fgraph)
    return (versions, key[1]) if versions else key


def install():
    """Give every COp the process-independent version and parameterless ops' modules a version (for graphs compiled
    afterwards)."""
    gof_op.COp.c_code_cache_version = stable_code_version
    cc.CLinker.cmodule_key_ = module_key
