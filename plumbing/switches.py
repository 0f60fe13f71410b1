"""The on/off switches of the speed changes: BINARYNET_XNOR_CONV, BINARYNET_FAST_IM2COL and BINARYNET_FAST_SUM
(docs/speed.md). Each change is on unless its variable is 0."""
import os


def switch_on(name):
    """False only where the environment variable `name` is 0 (spaces around it ignored); on when unset."""
    return os.environ.get(name, "1").strip() != "0"
