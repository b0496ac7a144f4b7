"""The one exception type for bad user input anywhere in :mod:`estimators`.

:class:`EstimatorInputError` is a ``ValueError`` whose message names the file, curve, row or field at fault; the CLI
prints it as a one-line error and exits with status 2. Any other exception raised from ``estimators`` is a bug.
"""

from __future__ import annotations


class EstimatorInputError(ValueError):
    """Input the estimators cannot use: a degenerate curve, an out-of-range target or setting, a bad prior file."""
