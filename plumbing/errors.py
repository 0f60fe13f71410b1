"""The one base class of every error a user can cause and fix.

Every command runs under `cli.main_guard`, which prints an ArchiveError as one line on stderr (the message
names the problem and the fix) and exits with status 2. Anything else is a bug and keeps its traceback.
"""
import tokenize
import zipfile
import zlib

# What NumPy 1.23 and zipfile raise when a .npy or .npz file is damaged, besides ValueError (which each reader
# words on its own). NumPy parses a .npy header with the tokenize module, so a damaged header can raise TokenError.
DAMAGED_NUMPY_FILE = (zipfile.BadZipFile, OSError, EOFError, KeyError, IndexError, zlib.error, OverflowError,
                      tokenize.TokenError, SyntaxError)


class ArchiveError(Exception):
    """A problem the user can fix (bad flag, missing or corrupt file, busy folder ...): one-line message."""


class UsageError(ArchiveError):
    """A bad command-line value."""


class DataError(ArchiveError):
    """A data file is missing, corrupt or cannot be downloaded."""


class RunError(ArchiveError):
    """A problem with a run's output folder or checkpoint."""
