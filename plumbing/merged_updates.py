"""One elementwise loop for each parameter's Adam update instead of three (docs/speed.md, item 25).

Lasagne's `adam` gives each parameter p with gradient g three new values (ORIGINALS.md §1.5):

    m' = beta1 * m + (1 - beta1) * g
    v' = beta2 * v + (1 - beta2) * g^2
    p' = p - a_t * m' / (sqrt(v') + epsilon)     (for binary weights then scaled and clipped to [-H, H])

Theano fuses each line into one loop, but keeps three loops: m' and v' are outputs of the training function (the
updates of m and v) as well as inputs of p''s loop, and its fusion only pulls a loop into a consumer that is its one
client. So every step reads g twice and m', v' once more after writing them: over BinaryConnect CIFAR-10's 14 M
weights, 10 passes over the weights where one loop needs 7.

The optimization here merges such a loop (the producer) into its consumer: one loop with several outputs, the
producer's outputs kept where the function still needs them. The scalar operations are the same ones on the same
values, so the numbers are the same bits (tests/test_merged_updates.py). It applies where a producer's output, of the
consumer's full shape, is used by the consumer and otherwise only as an output of the function (so merging cannot
make a cycle), up to 31 inputs and outputs (NumPy's limit is 32 arrays). The merged loop stores its outputs after it
has computed all of them (`StoreLastComposite`), so Theano's in-place optimizer may let any output overwrite any input.

`install()` (called by plumbing/compat.py) registers it after Theano's elementwise fusion, before its in-place
optimizations. `BINARYNET_MERGED_UPDATES=0` switches it off.
"""
from theano import gof, scalar
from theano.compile import optdb
from theano.tensor.basic import Reshape
from theano.tensor.elemwise import Elemwise

from plumbing.switches import switch_on

VERSION = ("binarynet-archive store-last composite", 1)
OPT_NAME = "binarynet_merged_updates"
# After Theano's elementwise fusion (49), before its destroy handler (49.5) and in-place optimizations (75).
OPT_POSITION = 49.2
MAX_ARRAYS = 31


class StoreLastComposite(scalar.Composite):
    """A Composite whose C code computes every output into a temporary and stores them all at the end, so an output
    may share memory with any input (Theano's Composite writes each output as soon as it is computed)."""

    def init_c_code(self):
        if hasattr(self, "_c_code"):
            return
        # Placeholders of Theano's Composite template: %(iK)s, %(oK)s, %(id)s, %(nodename)s, %(fail)s.
        names = {v: f"%(i{k})s" for k, v in enumerate(self.fgraph.inputs)}
        for v in self.fgraph.variables:
            if v.owner is None and v not in names:
                if not isinstance(v, gof.Constant):
                    raise ValueError("a Composite's orphans must be constants")
                names[v] = v.type.c_literal(v.data)
        code = ["{"]
        order = self.fgraph.toposort()
        self.nodenames = [f"%(nodename)s_subnode{j}" for j in range(len(order))]
        count = 0
        for j, node in enumerate(order):
            for out in node.outputs:
                count += 1
                names[out] = f"V%(id)s_tmp{count}"
                code.append(f"{out.type.dtype_specs()[1]} {names[out]};")
            code.append(node.op.c_code(node, self.nodenames[j], [names[v] for v in node.inputs],
                                       [names[v] for v in node.outputs], dict(fail="%(fail)s", id=f"%(id)s_{j}")))
        code += [f"%(o{k})s = {names[v]};" for k, v in enumerate(self.fgraph.outputs)]
        self._c_code = "\n".join(code) + "\n}\n"

    def c_code_cache_version(self):
        theanos = super(StoreLastComposite, self).c_code_cache_version()
        return theanos + VERSION if theanos else ()


def inline(op, inputs):
    """The outputs of scalar `op` applied to scalar variables `inputs`, a Composite's inner graph copied in."""
    if not isinstance(op, scalar.Composite):
        return op.make_node(*inputs).outputs
    copies = gof.graph.clone_get_equiv(op.inputs, op.outputs, copy_inputs=False,
                                       memo=dict(zip(op.inputs, inputs)))
    return [copies[v] for v in op.outputs]


def mergeable(fgraph, producer, consumer):
    """Whether `producer`'s loop can join `consumer`'s (see the module docstring)."""
    if not (isinstance(producer.op, Elemwise) and isinstance(consumer.op, Elemwise)) or producer is consumer:
        return False
    if producer.op.inplace_pattern or consumer.op.inplace_pattern:
        return False
    full = consumer.outputs[0].broadcastable
    if not full or any(full) or any(v.broadcastable != full for v in producer.outputs + consumer.outputs):
        return False
    for out in producer.outputs:
        if any(client != "output" and client is not consumer for client, _ in fgraph.clients(out)):
            return False
    return not any(strided(v) for v in producer.inputs + consumer.inputs if v.broadcastable == full)


def strided(v):
    """Whether `v` may be a non-contiguous view (a Subtensor with negative steps, a transpose): Theano runs loops over
    such arrays element by element, and a merged loop with many arrays so is slower than the loops it replaces."""
    return v.owner is not None and bool(getattr(v.owner.op, "view_map", None)) and not isinstance(v.owner.op, Reshape)


def merge(fgraph, producer, consumer):
    """One Elemwise node computing what `producer` and `consumer` computed; returns {old variable: new one}, or None
    where it would pass more than MAX_ARRAYS arrays."""
    kept = [out for out in producer.outputs if any(client == "output" for client, _ in fgraph.clients(out))]
    inputs = []
    for v in producer.inputs + [v for v in consumer.inputs if v not in producer.outputs]:
        if v not in inputs:
            inputs.append(v)
    if len(inputs) + len(kept) + len(consumer.outputs) > MAX_ARRAYS:
        return None
    scalars = {v: scalar.get_scalar_type(v.dtype)() for v in inputs}
    scalars.update(zip(producer.outputs, inline(producer.op.scalar_op, [scalars[v] for v in producer.inputs])))
    results = inline(consumer.op.scalar_op, [scalars[v] for v in consumer.inputs])
    olds = kept + consumer.outputs
    op = StoreLastComposite([scalars[v] for v in inputs], [scalars[v] for v in kept] + results)
    news = Elemwise(op)(*inputs, return_list=True)
    return dict(zip(olds, news))


class MergeUpdates(gof.Optimizer):
    """Merge producer loops into their consumers until none is left (module docstring)."""

    def add_requirements(self, fgraph):
        fgraph.attach_feature(gof.toolbox.ReplaceValidate())

    def apply(self, fgraph):
        changed = True
        while changed:
            changed = False
            for consumer in fgraph.toposort():
                if consumer not in fgraph.apply_nodes:
                    continue
                for v in consumer.inputs:
                    if v.owner is None or not mergeable(fgraph, v.owner, consumer):
                        continue
                    replacements = merge(fgraph, v.owner, consumer)
                    if replacements:
                        fgraph.replace_all_validate(list(replacements.items()), reason=OPT_NAME)
                        changed = True
                        break


def install():
    """Register the merge for every graph compiled afterwards (unless BINARYNET_MERGED_UPDATES=0). Returns whether it
    was registered."""
    if not switch_on("BINARYNET_MERGED_UPDATES"):
        return False
    if OPT_NAME not in optdb.__db__:
        optdb.register(OPT_NAME, MergeUpdates(), OPT_POSITION, "fast_run")
    return True
