"""Exceptions raised for bad user input.

One class so that command-line entry points can catch it and print a one-line message
(file, field, value) instead of a traceback, while programming errors still surface.
"""

from __future__ import annotations


class P2MInputError(ValueError):
    """A user-supplied file, field or value is invalid; the message names which."""
