"""Warm start without Theano's graph optimizer: optimized graphs kept in the compile directory (docs/speed.md item 27).

With every C module already compiled, most of `theano.function`'s time goes to the graph optimizer: about 5 of the 8-10
s of a BinaryNet ConvNet's warm start on a Zen 3 core. Its result depends only on what it reads, so the first compile
stores the optimized graph in `<compiledir>/optimized_graphs/<key>.pkl`, and a later one with the same key links that
graph instead of optimizing again. The key is a SHA-256 over:

- the graph as given to `theano.function`, node by node in topological order: each op pickled (its class and
  parameters), the types and names of all variables, constants with their values, and the inputs' roles (shared or
  not, update, borrow, mutable);
- Theano's, NumPy's and Python's versions, Theano's whole configuration, the BINARYNET_* (but BINARYNET_GRAPH_CACHE)
  and OMP_NUM_THREADS environment variables, the CPU's model and flags, the names of all registered graph
  optimizations, and the Python source of this package, of kernels/ and of the two method modules;
- the methods of the graph's op classes as they are now (a test or a patch that swaps one gets another key), and,
  when the stored graph is loaded, those of the classes of its optimized ops.

The stored graph is a flat list of nodes (op, input references, output types), rebuilt with `Apply` and linked as
Theano links an unpickled function: the same ops in the same graph, so the same C code and the same numbers
(tests/test_graph_cache.py). A graph that does not pickle is simply not stored; a file that does not load is
deleted and the graph optimized again; graphs not used for Theano's `cmodule.age_thresh_use` (24 days) are
deleted as Theano deletes its modules. `BINARYNET_GRAPH_CACHE=0` switches it off.
"""
import functools
import glob
import hashlib
import io
import logging
import os
import pickle
import re
import sys
import tempfile
import time
from collections import OrderedDict

import numpy
import theano
from theano import gof
from theano.compile import function_module
from theano.compile.sharedvalue import SharedVariable
from theano.misc.frozendict import frozendict

from plumbing import switches

_ORIGINAL_INIT = function_module.FunctionMaker.__init__
_LOG = logging.getLogger(__name__)
HERE = os.path.dirname(os.path.abspath(__file__))
FORMAT = 1  # bump when the stored layout changes


class Uncacheable(Exception):
    """A graph this cache does not store (an unpicklable op, a free variable that is not an input)."""


def enabled():
    return switches.switch_on("BINARYNET_GRAPH_CACHE")


def directory():
    return os.path.join(theano.config.compiledir, "optimized_graphs")


@functools.lru_cache(maxsize=None)
def _sources_digest():
    """SHA-256 of this package's Python files, the kernels' and the method modules' (where graph optimizations and
    ops live)."""
    digest = hashlib.sha256()
    top = os.path.dirname(HERE)
    paths = sorted(glob.glob(os.path.join(HERE, "*.py"))) + sorted(glob.glob(os.path.join(top, "kernels", "*.py"))) \
        + [os.path.join(top, name) for name in ("binary_net.py", "binary_connect.py")]
    for path in paths:
        if os.path.exists(path):
            digest.update(os.path.basename(path).encode() + b"\0")
            with open(path, "rb") as source:
                digest.update(source.read())
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def _cpu():
    """The CPU's model name and flags (graph choices such as the convolution op may depend on them)."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        import platform
        return platform.processor() + platform.machine()


class _Pickler(pickle.Pickler):
    """pickle.Pickler that writes a frozendict as its items only: a frozendict caches its hash in `_hash` the first
    time it is hashed (an optimizer run does that to the ops it sees), which would change the op's bytes and so the
    key of a later function sharing the op, and a cached hash of str keys is stale in another process."""

    def reducer_override(self, obj):
        if isinstance(obj, frozendict):
            return frozendict, (dict(obj),)
        return NotImplemented


def _pickle(obj):
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=4).dump(obj)
    return buffer.getvalue()


def _class_text(cls):
    """An op class and its bases with their methods, named by qualified name: the same in every process, and changed
    by a test or patch that swaps a method. (Plain attributes are left out: some are caches Theano fills lazily.)"""
    parts = []
    for base in cls.__mro__[:-1]:
        methods = []
        for name, value in sorted(base.__dict__.items()):
            function = getattr(value, "__func__", None) or getattr(value, "fget", None) or value
            if callable(function) and hasattr(function, "__qualname__"):
                methods.append(f"{name}={getattr(function, '__module__', '')}.{function.__qualname__}")
        parts.append(f"{base.__module__}.{base.__qualname__}({','.join(methods)})")
    return ";".join(parts)


def classes_text(ops):
    """_class_text of every class of `ops` and of their scalar ops, sorted."""
    classes = {type(op) for op in ops} | {type(op.scalar_op) for op in ops if hasattr(op, "scalar_op")}
    return "\n".join(sorted(_class_text(cls) for cls in classes))


def _configuration():
    """Every Theano configuration value and every registered graph optimization, as text."""
    values = []
    for param in theano.configparser._config_var_list:
        try:
            value = functools.reduce(getattr, param.fullname.split("."), theano.config)
        except Exception as error:  # a setting that cannot be read is part of the state too
            value = f"<{type(error).__name__}>"
        values.append(f"{param.fullname}={value!r}")
    names, seen, pending = set(), set(), [theano.compile.optdb]
    while pending:
        db = pending.pop()
        if id(db) in seen:
            continue
        seen.add(id(db))
        for name, entries in db.__db__.items():
            if entries:  # Theano's lookups leave empty entries behind
                names.add(f"{type(db).__name__}:{name}:{len(entries)}")
            pending.extend(entry for entry in entries if isinstance(entry, gof.optdb.DB))
    environment = sorted(f"{k}={v}" for k, v in os.environ.items()  # this cache's own switch is not part of it
                         if (k.startswith("BINARYNET_") or k == "OMP_NUM_THREADS") and k != "BINARYNET_GRAPH_CACHE")
    versions = f"Theano {theano.__version__}, NumPy {numpy.__version__}, Python {sys.version}"  # constant folding
    return "\n".join([versions, str(FORMAT), _sources_digest(), _cpu()] + values + sorted(names)
                     + environment)


def _variable_text(variable):
    return f"{variable.type}|{variable.type.__class__.__qualname__}|{variable.name}"


def graph_key(input_specs, output_specs, mode):
    """The cache key of a function: a hex SHA-256, or None if the graph cannot be described (a free variable) or the
    optimizer is an object of the caller's rather than a query of Theano's registered optimizations (its text would
    name only its class, not its settings)."""
    if not isinstance(getattr(mode, "_optimizer", None), gof.Query):
        return None
    digest = hashlib.sha256(_configuration().encode())
    # The mode as text, without the object addresses in it: its optimizer query, the optimizer sequence, the linker.
    digest.update(re.sub(r" at 0x[0-9a-f]+", "", f"{mode}|{mode.optimizer}|{type(mode.linker).__name__}").encode())
    variables = [spec.variable for spec in input_specs]
    number = {variable: k for k, variable in enumerate(variables)}
    for spec in input_specs:
        digest.update(f"in|{_variable_text(spec.variable)}|{isinstance(spec.variable, SharedVariable)}|"
                      f"{spec.mutable}|{spec.borrow}|{spec.strict}|{spec.allow_downcast}|{spec.implicit}|"
                      f"{spec.update is not None}".encode())
    updates = [spec.update for spec in input_specs if spec.update is not None]
    ends = [spec.variable for spec in output_specs] + updates
    op_bytes = {}
    nodes = gof.graph.io_toposort(variables, ends)
    for node in nodes:
        refs = []
        for variable in node.inputs:
            if variable not in number:
                if not isinstance(variable, gof.Constant):
                    return None
                number[variable] = len(number)
                data = variable.data
                data = data.tobytes() + str((data.dtype, data.shape)).encode() if hasattr(data, "tobytes") \
                    else _pickle(data)
                digest.update(b"const|" + _variable_text(variable).encode() + b"|" + data)
            refs.append(str(number[variable]))
        if id(node.op) not in op_bytes:
            try:
                op_bytes[id(node.op)] = _pickle(node.op)
            except Exception:
                return None
        digest.update(b"node|" + op_bytes[id(node.op)] + ",".join(refs).encode())
        for variable in node.outputs:
            number[variable] = len(number)
            digest.update(b"out|" + _variable_text(variable).encode())
    digest.update(classes_text([node.op for node in nodes]).encode())
    for spec in output_specs:
        if spec.variable not in number:
            return None
        digest.update(f"result|{number[spec.variable]}|{spec.borrow}".encode())
    for update in updates:
        if update not in number:
            return None
        digest.update(f"update|{number[update]}".encode())
    return digest.hexdigest()


def flatten(fgraph):
    """An optimized FunctionGraph as plain data: the nodes in topological order, each (op, input references,
    [(type, name, tag) per output], tag); references are ("in", k), ("const", k) or ("node", k, j)."""
    refs = {variable: ("in", k) for k, variable in enumerate(fgraph.inputs)}
    constants, nodes = [], []

    def ref(variable):
        if variable not in refs:
            if not isinstance(variable, gof.Constant):
                raise Uncacheable(f"free variable {variable}")
            refs[variable] = ("const", len(constants))
            constants.append(variable.clone())  # a clone carries no link to this FunctionGraph
        return refs[variable]

    for k, node in enumerate(fgraph.toposort()):
        inputs = [ref(variable) for variable in node.inputs]
        for j, variable in enumerate(node.outputs):
            refs[variable] = ("node", k, j)
        nodes.append((node.op, inputs, [(v.type, v.name, v.tag) for v in node.outputs], node.tag))
    outputs = [ref(variable) for variable in fgraph.outputs]
    return dict(format=FORMAT, n_inputs=len(fgraph.inputs), constants=constants, nodes=nodes, outputs=outputs,
                update_mapping=dict(fgraph.update_mapping or {}), classes=classes_text([n[0] for n in nodes]))


def rebuild(flat, input_specs):
    """A FunctionGraph from `flatten`'s data, on fresh clones of the current inputs (as Theano's std_fgraph makes)."""
    if flat["format"] != FORMAT or flat["n_inputs"] != len(input_specs):
        raise Uncacheable("stored graph of another layout")
    inputs = [spec.variable.clone() for spec in input_specs]
    made = []

    def variable(ref):
        if ref[0] == "in":
            return inputs[ref[1]]
        if ref[0] == "const":
            return flat["constants"][ref[1]]
        return made[ref[1]].outputs[ref[2]]

    for op, refs, outputs, tag in flat["nodes"]:
        results = []
        for out_type, name, out_tag in outputs:
            result = out_type.make_variable(name)
            result.tag = out_tag
            results.append(result)
        node = gof.Apply(op, [variable(ref) for ref in refs], results)
        node.tag = tag
        made.append(node)
    fgraph = gof.fg.FunctionGraph(inputs, [variable(ref) for ref in flat["outputs"]], clone=False,
                                  update_mapping=flat["update_mapping"])
    fgraph.attach_feature(gof.DestroyHandler())
    fgraph.attach_feature(StoredOrder(made))
    return fgraph


class StoredOrder(gof.toolbox.Feature):
    """Run the nodes in the order Theano's optimizer left them (each after the one stored before it). Without it
    the same graph may be linked in another valid order, which can change the peak memory, never the numbers."""

    def __init__(self, nodes):
        self.nodes = nodes

    def orderings(self, fgraph):
        nodes = [node for node in self.nodes if node in fgraph.apply_nodes]  # none in a clone of the graph
        return OrderedDict((after, [before]) for before, after in zip(nodes, nodes[1:]))


def _path(key):
    return os.path.join(directory(), key + ".pkl")


def load(key, input_specs):
    """The stored graph for `key` rebuilt on the current inputs, or None: absent, stored when a method of one of its
    op classes was another (a test or a patch swapped it since), or unreadable (then deleted)."""
    path = _path(key)
    try:
        with open(path, "rb") as stored:
            flat = pickle.load(stored)
        if flat["classes"] != classes_text([node[0] for node in flat["nodes"]]):
            _LOG.debug("optimized graph %s has ops whose methods changed since; optimized again", path)
            return None
        fgraph = rebuild(flat, input_specs)
        _touch(path)
        return fgraph
    except (FileNotFoundError, NotADirectoryError):  # not stored (or no folder to store in)
        return None
    except Exception as error:
        _LOG.warning("optimized graph %s does not load (%s); it is deleted and the graph optimized again",
                     path, error)
        try:
            os.remove(path)
        except OSError:
            pass
        return None


def _touch(path):
    """Mark a stored graph as used now (its modification time), for prune()."""
    try:
        os.utime(path)
    except OSError:
        pass


def prune():
    """Delete the stored graphs not used for Theano's cmodule.age_thresh_use (24 days by default), as Theano does
    with its compiled modules: an edit of the project's source gives every graph a new key, so old ones pile up."""
    oldest = time.time() - theano.config.cmodule.age_thresh_use
    for path in glob.glob(os.path.join(directory(), "*.pkl")) + glob.glob(os.path.join(directory(), "*.tmp")):
        try:
            if os.path.getmtime(path) < oldest:
                os.remove(path)
        except OSError:  # another process removed it first
            pass


def store(key, fgraph):
    """Write `fgraph` under `key` (temporary file, then rename); a graph that does not pickle, or a folder that cannot
    be written, only means it is not stored."""
    try:
        data = _pickle(flatten(fgraph))
    except Exception as error:
        _LOG.debug("optimized graph not stored: %s", error)
        return False
    temporary = None
    try:
        os.makedirs(directory(), exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory(), suffix=".tmp")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, _path(key))
        prune()
        return True
    except OSError as error:  # a full disk or a folder that cannot be written: the function is made all the same
        _LOG.warning("optimized graph not stored in %s (%s); the next start optimizes it again", directory(), error)
        if temporary and os.path.exists(temporary):
            os.remove(temporary)
        return False


def _as_list(values):
    if values is None:
        return []
    return list(values) if isinstance(values, (list, tuple)) else [values]


def maker_init(self, inputs, outputs, mode=None, accept_inplace=False, function_builder=function_module.Function,
               profile=None, on_unused_input=None, fgraph=None, output_keys=None, name=None):
    """FunctionMaker.__init__ that takes a stored optimized graph when there is one and stores it when there is not.

    A given fgraph (an unpickled function), a profiled compile or the switch at 0 go to Theano's own code unchanged.
    """
    arguments = dict(mode=mode, accept_inplace=accept_inplace, function_builder=function_builder, profile=profile,
                     on_unused_input=on_unused_input, output_keys=output_keys, name=name)
    if fgraph is not None or profile or not enabled():
        return _ORIGINAL_INIT(self, inputs, outputs, fgraph=fgraph, **arguments)
    # Wrap as Theano does (a wrapped In/Out passes through Theano's wrapping unchanged), keeping single outputs single.
    inputs = [self.wrap_in(i) for i in _as_list(inputs)]
    if outputs is not None:
        outputs = [self.wrap_out(o) for o in outputs] if isinstance(outputs, (list, tuple)) else self.wrap_out(outputs)
    key = graph_key(inputs, _as_list(outputs), theano.compile.mode.get_mode(mode))
    stored = load(key, inputs) if key else None
    if stored is not None:
        return _ORIGINAL_INIT(self, inputs, outputs, fgraph=stored, **arguments)
    _ORIGINAL_INIT(self, inputs, outputs, **arguments)
    if key:
        store(key, self.fgraph)


def install():
    """Every theano.function afterwards uses the stored optimized graphs."""
    function_module.FunctionMaker.__init__ = maker_init
