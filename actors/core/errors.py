"""The user-error type: bad input or missing workspace state that the user can fix.

Raise :class:`UserError` (or a subclass) with a one-line message that names the file, row or field. The CLI prints
such an error as ``error: …`` and exits with code 2; any other exception is a bug and shows its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Input or state the user can fix; the message names the file/row/field and says what to do."""


__all__ = ["UserError"]
