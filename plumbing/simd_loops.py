"""Theano's fused elementwise loops vectorized: the same numbers, several times faster (docs/speed.md, item 25).

Theano compiles its C code with -O2, where g++ 12 vectorizes only loops it can prove safe without run-time checks.
The loop Theano writes for a fused elementwise op (a `Composite`) over contiguous arrays takes a reference to each
array's element and writes the output through it; since an output may be one of the inputs (in place), g++ cannot
prove the arrays apart and keeps the loop scalar: one element per instruction, and a scalar square root and division
per element in Adam's update.

`contiguous_loop` is the loop Theano's Elemwise asks its scalar op for (`c_code_contiguous`) when every array is
contiguous. It reads each element's inputs into locals, computes, and stores the outputs at the end, so an output
that is also an input is read before it is written, and it marks the loop `omp simd`, so g++ vectorizes it (and
splits it over the OpenMP threads as Theano's loop did). Per element the float operations are the same, in the same
order; vector square root, division, multiplication and addition are rounded as the scalar ones, so the results are
the same bits (tests/test_simd_loops.py checks Adam's update, the stochastic binarization and others against Theano's
loop). Where an input is broadcast along some but not all axes, Theano's own loops run.

`install()` (called by plumbing/compat.py) gives every `Composite` this loop and a new cache version (Theano never
reuses a module compiled with its own loop). `BINARYNET_SIMD_LOOPS=0` switches it off.
"""
import re

from theano import config, gof, scalar

from plumbing.switches import switch_on

VERSION = ("binarynet-archive simd loop", 2)
THEANOS = dict(c_code_cache_version=scalar.Composite.c_code_cache_version)  # kept for the tests


def applies(node):
    """Whether every input and output of the Elemwise `node` is either of the output's full shape or one element."""
    full = node.outputs[0].broadcastable
    return all(v.broadcastable in (full, (True,) * len(full)) for v in node.inputs + node.outputs)


def contiguous_loop(self, node, name, inputs, outputs, sub):
    """C code of the Elemwise `node`'s loop over contiguous arrays (module docstring); `inputs` and `outputs` are
    the arrays' C names."""
    if not applies(node):
        raise gof.utils.MethodNotDefined()
    setup = [f"npy_intp n = PyArray_SIZE({outputs[0]});"]
    loads, stores = [], []
    for var, array in zip(node.inputs, inputs):
        c = var.type.dtype_specs()[1]
        if all(var.broadcastable):
            setup.append(f"const {c} {array}_one = (({c}*)PyArray_DATA({array}))[0];")
            loads.append(f"const {c} {array}_i = {array}_one;")
        else:
            setup.append(f"const {c} *{array}_ptr = (const {c}*)PyArray_DATA({array});")
            loads.append(f"const {c} {array}_i = {array}_ptr[i];")
    for var, array in zip(node.outputs, outputs):
        c = var.type.dtype_specs()[1]
        setup.append(f"{c} *{array}_ptr = ({c}*)PyArray_DATA({array});")
        loads.append(f"{c} {array}_i;")
        stores.append(f"{array}_ptr[i] = {array}_i;")
    task = self.c_code(node.tag.fake_node, name, [f"{a}_i" for a in inputs], [f"{a}_i" for a in outputs],
                       dict(sub, fail=gof.cc.failure_code(sub, use_goto=False)))
    # g++ 12 does not vectorize a loop holding a one-byte bool next to floats (Theano's comparisons); an int holds
    # the same 0 or 1.
    task = re.sub(r"\bnpy_bool (V\w*_tmp\d+);", r"int \1;", task)
    pragma = (f"#pragma omp parallel for simd if(n >= {config.openmp_elemwise_minsize})" if node.op.openmp
              else "#pragma omp simd")
    return "\n".join(setup + [pragma, "for (npy_intp i = 0; i < n; i++) {"] + loads + [task] + stores + ["}"])


def _versioned(self):
    theanos = THEANOS["c_code_cache_version"](self)
    return theanos + VERSION if theanos else ()


def install():
    """Give Theano's Composite the vectorized loop (for graphs compiled afterwards) unless BINARYNET_SIMD_LOOPS=0.
    Returns whether it did."""
    if not switch_on("BINARYNET_SIMD_LOOPS"):
        return False
    scalar.Composite.c_code_contiguous = contiguous_loop
    scalar.Composite.c_code_cache_version = _versioned
    return True
