"""The same compile-cache key for Theano's DimShuffle in every process (docs/speed.md).

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
`install()` is called by plumbing/compat.py, before any graph is compiled.
"""
import hashlib

from theano.gof import op as gof_op

THEANOS = {"c_code_cache_version": gof_op.COp.c_code_cache_version}  # kept for the tests


def stable_code_version(self):
    """COp.c_code_cache_version with a hash of the code that does not depend on the process."""
    digest = hashlib.sha256("\0".join(self.func_codes).encode("utf-8")).digest()
    version = (int.from_bytes(digest[:8], "big", signed=True),)
    if hasattr(self, "params_type"):
        version += (self.params_type.c_code_cache_version(),)
    return version


def install():
    """Give every COp (for graphs compiled afterwards) the process-independent version."""
    gof_op.COp.c_code_cache_version = stable_code_version
