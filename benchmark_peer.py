"""The peer side of `benchmark_training.py --peer`: one of the papers' networks in Larq on TensorFlow (CPU), timed
with the protocol of benchmark_training.py (docs/speed.md).

    .venv-peer/bin/python benchmark_peer.py --spec SPEC.json --repeats 5      # run by benchmark_training.py

Runs in its own virtual environment (`make peer`, requirements-peer.txt) and never imports Theano. The network
comes from a layer table (SPEC.json) that benchmark_training.py writes from the Lasagne network itself:

    {"batch_size": 50, "input_shape": [3, 32, 32], "learning_rate": 0.003,
     "layers": [["conv", 128], ["bn", 0.0001, 0.1], ["sign"], ["pool", 2], ["dense", 1024], ["dropout", 0.5], ...]}

Binary weight layers are Larq's QuantConv2D / QuantDense with `kernel_constraint="weight_clip"` and, as the
kernel quantizer, `"ste_sign"` (BinaryNet) or, where the table says `"weight_draw": "stochastic"` (the `bc-*`
rows), `stochastic_sign` below, BinaryConnect's draw, which Larq does not have; with a bias as in the Lasagne
layers. A "sign" (BinaryNet's binary_tanh) becomes the next layer's `input_quantizer`
("ste_sign", the same straight-through gradient clipped at |x| <= 1), or a sign activation when dropout comes
between. Batch norm: Keras BatchNormalization, momentum = 1 - alpha, the table's epsilon. Loss squared hinge,
optimizer Adam. Images are NHWC (TensorFlow's CPU layout); the parameter shapes are those of the Lasagne network.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

RESULT_PREFIX = "BENCHMARK-RESULT "


def weight_shapes(spec):
    """The (W, b) shapes of every weight layer of the table, in Lasagne's layout: conv W (out, in, kh, kw), dense W
    (in, out). benchmark_training.py checks them against the Lasagne network, the peer against its Keras model."""
    channels, height, width = spec["input_shape"]
    flat = None
    shapes = []
    for layer in spec["layers"]:
        kind = layer[0]
        if kind == "conv":
            shapes.append(((layer[1], channels, 3, 3), (layer[1],)))
            channels = layer[1]
        elif kind == "pool":
            height, width = height // layer[1], width // layer[1]
        elif kind == "dense":
            fan_in = flat if flat is not None else channels * height * width
            shapes.append(((fan_in, layer[1]), (layer[1],)))
            flat = layer[1]
    return shapes


def stochastic_sign(tf):
    """BinaryConnect's stochastic binarization (paper section 2.3, binary_connect.binarize_weights with H = 1):
    Wb = +1 with probability p = clip((W + 1) / 2, 0, 1), else -1, a new uniform draw per weight at every step, and
    the gradient passed straight through to W."""
    @tf.custom_gradient
    def quantize(w):
        p = tf.clip_by_value((w + 1.) / 2., 0., 1.)
        wb = tf.where(tf.random.uniform(tf.shape(w), dtype=w.dtype) < p, tf.ones_like(w), -tf.ones_like(w))
        return wb, lambda dy: dy
    return quantize


def build_model(spec, tf, lq):
    """The Keras model of the layer table (see the module docstring)."""
    keras = tf.keras
    draw = spec.get("weight_draw", "sign")
    if draw not in ("sign", "stochastic"):
        raise SystemExit(f"unknown weight_draw {draw!r} in the layer table: use 'sign' or 'stochastic'")
    quantizer = stochastic_sign(tf) if draw == "stochastic" else "ste_sign"
    binary = dict(kernel_quantizer=quantizer, kernel_constraint="weight_clip", use_bias=True)
    channels, height, width = spec["input_shape"]
    inputs = keras.Input((height, width, channels), batch_size=spec["batch_size"])
    x = inputs
    pending_sign = False  # BinaryNet's binary_tanh, applied as the next weight layer's input quantizer
    layers = spec["layers"]
    for i, layer in enumerate(layers):
        kind = layer[0]
        if kind in ("conv", "dense"):
            quantizer, pending_sign = ("ste_sign" if pending_sign else None), False
        if kind == "conv":
            x = lq.layers.QuantConv2D(layer[1], (3, 3), padding="same", input_quantizer=quantizer, **binary)(x)
        elif kind == "dense":
            if len(x.shape) > 2:
                x = keras.layers.Flatten()(x)
            x = lq.layers.QuantDense(layer[1], input_quantizer=quantizer, **binary)(x)
        elif kind == "pool":
            x = keras.layers.MaxPooling2D(layer[1])(x)
        elif kind == "bn":
            x = keras.layers.BatchNormalization(epsilon=layer[1], momentum=1 - layer[2])(x)
        elif kind == "relu":
            x = keras.layers.ReLU()(x)
        elif kind == "sign" and i + 1 < len(layers) and layers[i + 1][0] in ("conv", "dense"):
            pending_sign = True
        elif kind == "sign":
            x = keras.layers.Activation(lq.quantizers.SteSign())(x)
        elif kind == "dropout":
            x = keras.layers.Dropout(layer[1])(x)
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
    model = keras.Model(inputs, x)
    model.compile(optimizer=keras.optimizers.Adam(spec["learning_rate"]), loss="squared_hinge")
    return model


def keras_weight_shapes(model):
    """The model's (kernel, bias) shapes in Lasagne's layout (conv kernels are (kh, kw, in, out) in Keras)."""
    shapes = []
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            kernel = tuple(layer.kernel.shape)
            if len(kernel) == 4:
                kernel = (kernel[3], kernel[2], kernel[0], kernel[1])
            shapes.append((kernel, tuple(layer.bias.shape)))
    return shapes


def measure(spec, repeats):
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # the peer runs on the CPU, as Theano does here
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import larq as lq
    import tensorflow as tf

    np.random.seed(1234)
    tf.random.set_seed(1234)
    start = time.time()
    model = build_model(spec, tf, lq)
    expected = [tuple(map(tuple, pair)) for pair in weight_shapes(spec)]
    if keras_weight_shapes(model) != expected:
        raise SystemExit(f"peer model shapes {keras_weight_shapes(model)} differ from the table's {expected}")
    batch = spec["batch_size"]
    channels, height, width = spec["input_shape"]
    X = np.random.uniform(-1, 1, (batch, height, width, channels)).astype(np.float32)
    y = -np.ones((batch, 10), np.float32)
    y[np.arange(batch), np.random.randint(0, 10, batch)] = 1
    model.train_on_batch(X, y)  # the warm-up call traces and compiles the training graph
    compile_seconds = time.time() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.train_on_batch(X, y)
        times.append(time.perf_counter() - start)
    intra, inter = (tf.config.threading.get_intra_op_parallelism_threads(),
                    tf.config.threading.get_inter_op_parallelism_threads())
    threads = f"intra-op {intra}, inter-op {inter} (0 = all cores)"
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")
    return dict(times=times, seconds=statistics.median(times), min_seconds=min(times),
                compile_seconds=compile_seconds, peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.,
                blas=f"TensorFlow {tf.__version__} + Larq {lq.__version__}, oneDNN {onednn}",
                pools=[threads], omp_threads=os.environ.get("OMP_NUM_THREADS", "unset"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help="the layer table, a JSON file")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    with open(args.spec) as f:
        spec = json.load(f)
    print(RESULT_PREFIX + json.dumps(measure(spec, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
