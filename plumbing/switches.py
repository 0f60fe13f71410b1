"""The switches of the speed changes (docs/speed.md): on/off ones (BINARYNET_XNOR_CONV, BINARYNET_FAST_IM2COL,
BINARYNET_FAST_SUM, BINARYNET_SIMD_LOOPS, BINARYNET_MERGED_UPDATES, BINARYNET_PCH, BINARYNET_GRAPH_CACHE; on unless 0)
and two-way choices (BINARYNET_CONV, BINARYNET_BN)."""
import os


def switch_on(name):
    """False only where the environment variable `name` is 0 (spaces around it ignored); on when unset."""
    return os.environ.get(name, "1").strip() != "0"


def choice(name, default, other):
    """The value of the environment variable `name`, `default` or `other` (case and spaces ignored; unset or empty is
    `default`); any other value stops the program with one line naming both."""
    value = os.environ.get(name, default).strip().lower() or default
    if value not in (default, other):
        raise SystemExit(f"error: {name}={value!r} is not a choice; use {default} (the default) or {other}")
    return value
