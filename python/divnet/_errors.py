"""The exceptions divnet raises.

Every error from the library is a :class:`DivnetError`; its message is the one line the
``divnet`` command prints after ``divnet: error:`` for the same problem (an input the command
reads from a file is named by the argument it came from: ``activations``, ``weights``,
``state_dict``, ``calibration``, ``kernel``). Each class also derives from the built-in
exception that fits, so ``except ValueError`` catches bad inputs as usual.
"""

from __future__ import annotations


class DivnetError(Exception):
    """Base class of every error raised by divnet's library."""


class InvalidInputError(DivnetError, ValueError):
    """An argument is out of range or inconsistent (a k larger than the layer, an unknown
    method, a keep list with an index twice, ...)."""


class FormatError(DivnetError, ValueError):
    """An array or tensor has the wrong shape or dtype, or holds NaN or Inf; the message
    starts with the argument's name (``activations: ...``, ``weights: ...``)."""


class FileError(DivnetError, OSError):
    """The operating system refused a read or a write."""


class NoAdapterError(DivnetError, RuntimeError):
    """``backend="gpu"`` was asked for and no GPU adapter is there."""


class GpuError(DivnetError, RuntimeError):
    """The GPU failed: out of memory, device lost, a limit too small. With
    ``backend="auto"`` divnet retries on the CPU instead (with a ``RuntimeWarning``)."""


class ForkedProcessError(DivnetError, RuntimeError):
    """divnet was called in a process forked from one that had already used it (a
    ``multiprocessing`` worker started with the ``"fork"`` method, a ``DataLoader`` worker):
    the worker threads it started in the parent do not exist in the child, and the work would
    wait for them forever. Start such workers with ``"spawn"`` or ``"forkserver"``, or use
    divnet in the workers only."""


class NumericalError(DivnetError, ArithmeticError):
    """A numerical failure that the input checks could not foresee (a DPP that drew nothing
    from a kernel with tiny eigenvalues, ...)."""
