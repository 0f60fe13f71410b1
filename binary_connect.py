"""BinaryConnect: binary weights during propagations (Courbariaux, Bengio, David, NIPS 2015).

The helper module of the BinaryConnect experiments (ORIGINALS.md §1): weight binarization, binary Dense and
Conv2D layers, the Glorot learning-rate scale, the scaled-Adam-then-clip update, and the training loop.
`binary_net.py` builds on it.
"""
import functools
import gc
from collections import OrderedDict

from plumbing import compat  # noqa: F401  (Theano flags and Lasagne patches come first)
from plumbing import runfiles
from plumbing.switches import switch_on
from plumbing.compat import T, lasagne, np, theano
from theano.sandbox.rng_mrg import MRG_RandomStreams

from kernels.xnor_conv import XnorConv2D


def hard_sigmoid(x):
    """The original `hard_sigmoid`, [BC] Eq. 3: clip((x + 1) / 2, 0, 1)."""
    return T.clip((x + 1.) / 2., 0, 1)


def binarize_weights(W, H=1., binary=True, deterministic=False, stochastic=False, srng=None):
    """The original `binarization`, [BC] Eq. 1-2: the binary weights Wb used in propagations (ORIGINALS.md §1.1).

    deterministic binarization: Wb = +H if W >= 0 else -H (hard_sigmoid(0) = 0.5 rounds up to +H);
    stochastic: Wb = +H with probability p = hard_sigmoid(W / H), else -H, a new draw at every evaluation.
    Stochastic BinaryConnect is evaluated (deterministic=True) with the real weights, as the original.
    """
    if not binary or (deterministic and stochastic):
        return W
    floatX = theano.config.floatX
    p = hard_sigmoid(W / H)
    if stochastic:
        bits = srng.binomial(n=1, p=p, size=T.shape(W), dtype=floatX)
    else:
        # round_half_away_from_zero(p) for p in [0, 1] is exactly [p >= 0.5], computed from the same float32 p
        # (tested on the float32 edges around 0); the comparison is several times faster than the round.
        bits = T.cast(T.ge(p, 0.5), floatX)
    # bits in {0, 1} -> {-H, +H}, without a branch per weight (a Switch costs 3x more on random signs)
    return bits * np.float32(2 * H) - np.float32(H)


def glorot_range(fan_in, fan_out):
    """sqrt(1.5 / (fan_in + fan_out)): half of Glorot-uniform's bound (ORIGINALS.md §1.3)."""
    return np.float32(np.sqrt(1.5 / (fan_in + fan_out)))


def glorot_lr_scale(fan_in, fan_out):
    """The per-layer learning-rate scale 1 / sqrt(1.5 / (fan_in + fan_out)) of [BC] §2.5 (ORIGINALS.md §2.3)."""
    return np.float32(1. / glorot_range(fan_in, fan_out))


class BinaryLayerMixin(object):
    """Shared set-up of the binary layers: H, W_LR_scale, the random stream and the 'binary' tag of W.

    Construction order follows the original (it fixes which numbers the global rng hands out): scales, then
    the layer's MRG stream seeded from lasagne's rng, then the parent constructor (which draws W).
    """

    def _setup_binary(self, fan_in, fan_out, binary, stochastic, H, W_LR_scale):
        self.binary, self.stochastic = binary, stochastic
        self.H = glorot_range(fan_in, fan_out) if H == "Glorot" else np.float32(H)
        self.W_LR_scale = glorot_lr_scale(fan_in, fan_out) if W_LR_scale == "Glorot" else np.float32(W_LR_scale)
        self._srng = MRG_RandomStreams(lasagne.random.get_rng().randint(1, 2147462579))

    def _tag_binary(self):
        if self.binary:
            self.params[self.W] = set(["binary"])  # W leaves the 'trainable' set: it gets its own update

    def _binarized(self, deterministic):
        self.Wb = binarize_weights(self.W, self.H, self.binary, deterministic, self.stochastic, self._srng)
        return self.Wb

    def _output_with_binary_weights(self, parent_output, input, deterministic, **kwargs):
        """Run the parent's computation with Wb in place of W (Lasagne 0.1 has no `convolve` hook)."""
        real_W = self.W
        self.W = self._binarized(deterministic)
        try:
            return parent_output(self, input, **kwargs)
        finally:
            self.W = real_W


class DenseLayer(BinaryLayerMixin, lasagne.layers.DenseLayer):
    """Dense layer with binary weights: y = f(x . Wb + b), Wb = binarize(W) (ORIGINALS.md §1.3).

    fan_in = prod(input_shape[1:]), fan_out = num_units. Binary layers start from W ~ U(-H, H).
    """

    def __init__(self, incoming, num_units, binary=True, stochastic=True, H=1., W_LR_scale="Glorot", **kwargs):
        shape = incoming.output_shape if isinstance(incoming, lasagne.layers.Layer) else incoming
        self._setup_binary(int(np.prod(shape[1:])), num_units, binary, stochastic, H, W_LR_scale)
        if binary:
            kwargs["W"] = lasagne.init.Uniform((-self.H, self.H))
        super(DenseLayer, self).__init__(incoming, num_units, **kwargs)
        self._tag_binary()

    def get_output_for(self, input, deterministic=False, **kwargs):
        return self._output_with_binary_weights(lasagne.layers.DenseLayer.get_output_for, input, deterministic,
                                                **kwargs)


class Conv2DLayer(BinaryLayerMixin, lasagne.layers.Conv2DLayer):
    """2-D convolution layer with binary weights: y = f(conv(x, Wb) + b) (ORIGINALS.md §1.3).

    fan_in = kh * kw * C_in, fan_out = kh * kw * C_out (no division by the pool size, as the original).
    binary_inputs=True tells the layer its input is exactly +1/-1 (BinaryNet's binary_tanh): then, with +1/-1
    weights (binary, deterministic, H = 1), stride 1 and a tuple pad, the forward product runs on the XNOR-popcount
    kernel (kernels/xnor_conv.py, the same numbers as CorrMM) unless BINARYNET_XNOR_CONV=0 (docs/speed.md).
    """

    def __init__(self, incoming, num_filters, filter_size, binary=True, stochastic=True, H=1.,
                 W_LR_scale="Glorot", binary_inputs=False, **kwargs):
        self.binary_inputs = binary_inputs
        shape = incoming.output_shape if isinstance(incoming, lasagne.layers.Layer) else incoming
        kh, kw = (filter_size, filter_size) if isinstance(filter_size, int) else filter_size
        self._setup_binary(kh * kw * shape[1], kh * kw * num_filters, binary, stochastic, H, W_LR_scale)
        if binary:
            kwargs["W"] = lasagne.init.Uniform((-self.H, self.H))
        super(Conv2DLayer, self).__init__(incoming, num_filters, filter_size, **kwargs)
        self._tag_binary()

    def get_output_for(self, input, deterministic=False, input_shape=None, **kwargs):
        """Lasagne 0.1 pads the input by copying it into a zero tensor and then runs an unpadded convolution; here
        the convolution pads on its own (Theano's CorrMM zero-fills the border in its im2col), the same numbers
        without the copy and its gradient (docs/speed.md)."""
        if not (isinstance(self.pad, tuple) and self.untie_biases is False):
            return self._output_with_binary_weights(lasagne.layers.Conv2DLayer.get_output_for, input, deterministic,
                                                    **kwargs)
        Wb = self._binarized(deterministic)
        if self.uses_xnor():
            # conv2d flips the filters (filter_flip=True) and then correlates, as Theano's optimizer builds CorrMM
            conved = XnorConv2D(border_mode=self.pad)(input, Wb[:, :, ::-1, ::-1])
        else:
            conved = self.convolution(input, Wb, subsample=self.stride, input_shape=input_shape or self.input_shape,
                                      filter_shape=self.get_W_shape(), border_mode=self.pad)
        if self.b is not None:
            conved = conved + self.b.dimshuffle("x", 0, "x", "x")
        return self.nonlinearity(conved)

    def uses_xnor(self):
        """True where the XNOR forward is exact: +1/-1 inputs and weights, stride 1, tuple pad, switch not '0'."""
        return (self.binary_inputs and self.binary and not self.stochastic and self.H == 1
                and tuple(self.stride) == (1, 1) and isinstance(self.pad, tuple) and self.untie_biases is False
                and switch_on("BINARYNET_XNOR_CONV"))


def binary_layers(network):
    return [layer for layer in lasagne.layers.get_all_layers(network) if getattr(layer, "binary", False)]


def compute_grads(loss, network, others=()):
    """The original `compute_grads`, [BC] Algorithm 1 step 2: dloss/dWb for every binary layer (ORIGINALS.md §1.4),
    then dloss/dp for every p in `others`.

    One `theano.grad` call for all of them. The original calls it once per layer (and Lasagne's `adam` once more for
    the other parameters); each call builds its own backward graph, and Theano's optimizer merges the copies into the
    graph one call builds, so the compiled functions are the same (tests/test_binary_connect.py compares them) and
    only the time to build them differs (docs/speed.md, item 20).

    Call after building the training graph and before building the test graph: each get_output call
    replaces layer.Wb.
    """
    return theano.grad(loss, wrt=[layer.Wb for layer in binary_layers(network)] + list(others))


def scale_and_clip(updates, network):
    """The original `clipping_scaling`, [BC] Algorithm 1 step 3 (and [BNN] Algorithm 1 step 3):
    W_new = clip(W + W_LR_scale * (W_proposed - W), -H, H) for every binary W (ORIGINALS.md §1.5)."""
    for layer in binary_layers(network):
        print("W_LR_scale = " + str(layer.W_LR_scale))
        print("H = " + str(layer.H))
        step = updates[layer.W] - layer.W
        updates[layer.W] = T.clip(layer.W + layer.W_LR_scale * step, -layer.H, layer.H)
    return updates


def adam_updates(loss, network, learning_rate):
    """The scripts' update (their two `lasagne.updates.adam` calls): two Adams with the same LR (ORIGINALS.md §1.5).

    Binary W: Adam on dloss/dWb, step scaled by the layer's W_LR_scale, then clipped to [-H, H].
    Other trainable params (b, beta, gamma): plain Adam. Without binary layers: one Adam over all.
    """
    if not binary_layers(network):
        params = lasagne.layers.get_all_params(network, trainable=True)
        return lasagne.updates.adam(loss, params, learning_rate=learning_rate)
    W = lasagne.layers.get_all_params(network, binary=True)
    others = lasagne.layers.get_all_params(network, trainable=True, binary=False)
    grads = compute_grads(loss, network, others)
    updates = OrderedDict(lasagne.updates.adam(grads[:len(W)], W, learning_rate=learning_rate))
    updates = scale_and_clip(updates, network)
    updates.update(lasagne.updates.adam(grads[len(W):], others, learning_rate=learning_rate))
    return updates


def squared_hinge_loss(output, targets):
    """The scripts' loss, [BC] §2.6 / [BNN] §2.6: mean over batch and classes of max(0, 1 - t * y)^2, targets in
    {-1, +1} (ORIGINALS.md §1.6)."""
    return T.mean(T.sqr(T.maximum(0., 1. - targets * output)))


def error_rate(output, targets):
    """Fraction of rows whose argmax differs from the target's argmax (ORIGINALS.md §1.6)."""
    return T.mean(T.neq(T.argmax(output, axis=1), T.argmax(targets, axis=1)), dtype=theano.config.floatX)


def compile_functions(network, input_var, target_var, learning_rate):
    """The scripts' `train_fn` and `val_fn`: train_fn(x, t, LR) -> loss (applies the updates), val_fn(x, t) ->
    [loss, error].

    The training graph (and its gradients) is built before the test graph, as §1.4 requires. From here on freed
    arrays of every size are reused, not unmapped (compat.keep_large_arrays_mapped; the data are loaded by now).
    """
    compat.keep_large_arrays_mapped()
    train_output = lasagne.layers.get_output(network, deterministic=False)
    loss = squared_hinge_loss(train_output, target_var)
    with compat.no_creation_traces():
        updates = adam_updates(loss, network, learning_rate)
    test_output = lasagne.layers.get_output(network, deterministic=True)
    test_loss = squared_hinge_loss(test_output, target_var)
    # Theano's graph optimizer makes millions of short-lived objects; Python's cyclic garbage collector, run every
    # 700 allocations, took about a third of a warm compile (docs/speed.md). Collect once afterwards instead.
    gc.disable()
    try:
        with compat.no_creation_traces():
            train_fn = theano.function([input_var, target_var, learning_rate], loss, updates=updates)
            val_fn = theano.function([input_var, target_var], [test_loss, error_rate(test_output, target_var)])
    finally:
        gc.enable()
        gc.collect()
    return train_fn, val_fn, updates


def shuffle_rows(X, y, order, parts=None):
    """The originals' `shuffle(X, y)` inside `train`: permute the training rows with numpy's global rng (§1.10).

    parts=None: BinaryConnect's shuffle, one permutation of all rows and new arrays (twice the memory).
    parts=k: BinaryNet's shuffle, k contiguous chunks of floor(N / k) rows, each permuted in place through a
    one-chunk buffer (the rows past k * floor(N / k) stay where they are, as in the original). As in the
    original, one index list is shuffled again for each chunk: chunk k's permutation is a shuffle of chunk k-1's.
    `order` (row -> original index) is permuted alongside, so an interrupted run can restore the order.
    """
    if parts is None:
        perm = np.arange(len(X))
        np.random.shuffle(perm)
        return X[perm], y[perm], order[perm]
    chunk = len(X) // parts
    perm = np.arange(chunk)
    for k in range(parts):
        rows = slice(k * chunk, (k + 1) * chunk)
        np.random.shuffle(perm)
        X[rows] = X[rows][perm]
        y[rows] = y[rows][perm]
        order[rows] = order[rows][perm]
    return X, y, order


def epoch_pass(fn, X, y, batch_size, LR=None, progress=None, partial_batch=False):
    """Run fn over floor(N / batch_size) minibatches (the remainder is skipped, as the original).

    partial_batch=True also runs the remainder as a last, smaller minibatch (the Torch7 code, docs/torch7.md §6)
    and weights each batch's error by its rows, so the error is over every sample.
    Training (LR given): returns the mean loss. Evaluation: returns (mean loss, error in percent).
    """
    n_batches = -(-len(X) // batch_size) if partial_batch else len(X) // batch_size
    losses, errors, sizes = [], [], []
    for i in range(n_batches):
        rows = slice(i * batch_size, (i + 1) * batch_size)
        if LR is None:
            loss, err = fn(X[rows], y[rows])
            errors.append(err)
        else:
            loss = fn(X[rows], y[rows], LR)
        losses.append(loss)
        sizes.append(len(X[rows]))
        if progress:
            progress(i + 1, n_batches)
    if LR is None:
        error = np.average(errors, weights=sizes) if partial_batch else np.mean(errors)
        return float(np.mean(losses)), float(error) * 100
    return float(np.mean(losses))


def print_epoch(e, num_epochs, seconds, LR, row):
    """The originals' nine-line epoch block; values start at column 34 (ORIGINALS.md §1.11)."""
    print("Epoch " + str(e) + " of " + str(num_epochs) + " took " + str(seconds) + "s")
    for label, value in [("LR:", LR), ("training loss:", row["train_loss"]), ("validation loss:", row["val_loss"]),
                         ("validation error rate:", str(row["val_error"]) + "%"),
                         ("best epoch:", row["best_epoch"]),
                         ("best validation error rate:", str(row["best_val_error"]) + "%"),
                         ("test loss:", row["test_loss"]), ("test error rate:", str(row["test_error"]) + "%")]:
        print("  " + label.ljust(31) + str(value))


def train(train_fn, val_fn, model, batch_size, LR_start, LR_decay, num_epochs, X_train, y_train, X_val, y_val,
          X_test, y_test, shuffle_parts=None, run=None, run_info=None, state_vars=(), partial_batch=False):
    """The original `train` of binary_connect.py and binary_net.py (ORIGINALS.md §1.10).

    Shuffle once; then each epoch: train on floor(N / batch_size) minibatches with the epoch's LR, shuffle,
    validate; when the validation error is <= the best so far (ties go to the later epoch) evaluate the test
    set and save all parameters; print the epoch block; LR <- LR * LR_decay. The reported test error is the
    one of the best-validation epoch.

    shuffle_parts=None is BinaryConnect's copying shuffle; an integer is BinaryNet's in-place shuffle (the one
    difference between the two originals' `train`). `run` (plumbing.runfiles.Run, claimed by the script) keeps
    results.json, log.jsonl, the best parameters and a checkpoint of every epoch (all `state_vars`, numpy's rng,
    the row order), so that a resumed run ends with the numbers of an uninterrupted one. Returns the summary.
    The Torch7 method passes LR_decay as a function (epoch, LR) -> next LR and partial_batch=True (epoch_pass).
    """
    run = run or runfiles.Run(None)
    order = np.arange(len(X_train))
    progress = runfiles.progress_bar("epoch") if runfiles.show_progress() else None
    summary = dict(epochs=num_epochs, epochs_done=0, best_epoch=0, best_val_error=100., val_error=None,
                   test_error=None, test_loss=None, LR=LR_start, seconds=0.)
    restored = run.start(run_info, state_vars, model)
    if restored:
        summary, order = restored
        X_train[...], y_train[...] = X_train[order], y_train[order]
        print("Resuming after epoch " + str(summary["epochs_done"]) + " of " + str(num_epochs))
    else:
        X_train, y_train, order = shuffle_rows(X_train, y_train, order, shuffle_parts)
    LR = summary["LR"]
    run_pass = functools.partial(epoch_pass, partial_batch=True) if partial_batch else epoch_pass
    for epoch in range(summary["epochs_done"] + 1, num_epochs + 1):
        start = runfiles.clock()
        train_loss = run_pass(train_fn, X_train, y_train, batch_size, LR, progress)
        X_train, y_train, order = shuffle_rows(X_train, y_train, order, shuffle_parts)
        val_loss, val_error = run_pass(val_fn, X_val, y_val, batch_size)
        if val_error <= summary["best_val_error"]:
            summary.update(best_val_error=val_error, best_epoch=epoch)
            summary["test_loss"], summary["test_error"] = run_pass(val_fn, X_test, y_test, batch_size)
            run.stage_parameters(epoch)
        seconds = runfiles.clock() - start
        row = dict(epoch=epoch, LR=LR, train_loss=train_loss, val_loss=val_loss, val_error=val_error,
                   best_epoch=summary["best_epoch"], best_val_error=summary["best_val_error"],
                   test_loss=summary["test_loss"], test_error=summary["test_error"], seconds=seconds)
        print_epoch(epoch, num_epochs, seconds, LR, row)
        LR = LR_decay(epoch, LR) if callable(LR_decay) else LR * LR_decay
        summary.update(epochs_done=epoch, LR=LR, val_error=val_error, seconds=summary["seconds"] + seconds)
        run.end_epoch(row, summary, order)
    return run.summary(summary)


def train_and_report(network, input_var, target_var, LR, hp, data, train_size, run=None, run_info=None,
                     shuffle_parts=None):
    """What every experiment script does after building its network: compile, train on the first `train_size`
    rows, print the test error at the best validation epoch beside the paper's. Returns the results summary."""
    train_fn, val_fn, updates = compile_functions(network, input_var, target_var, LR)
    print("Training...")
    summary = train(train_fn, val_fn, network, hp["batch_size"], hp["LR_start"], hp["LR_decay"], hp["num_epochs"],
                    data["X_train"][:train_size], data["y_train"][:train_size], data["X_val"], data["y_val"],
                    data["X_test"], data["y_test"], shuffle_parts=shuffle_parts, run=run, run_info=run_info,
                    state_vars=runfiles.state_variables(network, updates))
    paper_error = (run_info or {}).get("paper_test_error")
    print(f"Test error at the best validation epoch ({summary['best_epoch']}): {summary['test_error']}% "
          f"(paper: {paper_error}%)")
    return summary
