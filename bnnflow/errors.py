"""The one exception type that reaches the user as a single sentence."""


class BnnflowError(Exception):
    """A user-facing error: its message is one complete sentence that says what to do.

    The CLI prints it without a traceback and exits non-zero.
    """

    exit_code = 2


class MissingToolError(BnnflowError):
    """A vendor tool (Vivado, Vitis HLS, a board) that a step needs is not installed."""

    exit_code = 3


class DoesNotFit(BnnflowError):
    """The design's estimates exceed the board's budget (`bnnflow estimate` reports it)."""

    exit_code = 4


class Interrupted(BnnflowError):
    """Ctrl-C, reported with what it left (as the shell's 128 + SIGINT)."""

    exit_code = 130
