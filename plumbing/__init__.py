"""The plumbing under the papers' code: everything the experiments need that is not a rule of the papers.

    errors         the one base class of every user-facing error (printed as one line)
    cli            the shared command line: parser, value checks, the guard that prints one line and exits
    compat         Theano 1.0.5 / Lasagne 0.1 on today's Python: flags, BLAS, the removed `downsample` module
    datasets       the official files: download (URLs, checksums, resume) and readers (pylearn2's role)
    preprocessing  GCN, ZCA, LeCun LCN and their on-disk cache (pylearn2's preprocessing)
    runfiles       a run's folder: results.json, log.jsonl, best parameters, checkpoint for --resume

Nothing here imports the papers' modules (binary_connect, binary_net, batch_norm, convnet, the scripts).
"""
