"""Exit codes that mean one thing in every command, and the error a user fixes by editing an input.

=====  ==================================================================================
code   meaning
=====  ==================================================================================
0      everything asked for is done
1      raystep or its environment broke: one line on the terminal, the traceback in a log
2      bad input or config: one line names the file, the line and the field; nothing ran
3      some rows failed (a request, a generation) and were kept with their error; a rerun
       retries them and keeps the rows already done
130    interrupted; a rerun resumes where it stopped
=====  ==================================================================================
"""

from __future__ import annotations

DONE = 0
BROKEN = 1
BAD_INPUT = 2
ROWS_FAILED = 3
INTERRUPTED = 130


class InputError(ValueError):
    """Input or config the user has to fix; the message names the file, line and field."""


class EmptyInputError(InputError):
    """An input with nothing to do: an error, never a finished empty stage."""


class RowsFailedError(RuntimeError):
    """A step whose rows failed and were kept: what runs after it would build on the holes (exit 3)."""
