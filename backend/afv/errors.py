"""Exceptions with a user-facing message and an actionable hint.

Every error that reaches a user (CLI, server, add-on) is an AfvError: `message` says what is
wrong, `hint` says what to do about it. The server maps InputError to HTTP 4xx.
"""

from __future__ import annotations


class AfvError(Exception):
    """Base class: a failure we can explain to the user."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(AfvError):
    """The user's input (mesh, video, masks, camera, options) is unusable."""


class EngineError(AfvError):
    """An engine could not produce a result from otherwise valid input."""


class Cancelled(AfvError):
    """The work was cancelled through its CancelToken."""

    def __init__(self, message: str = "cancelled", hint: str = "") -> None:
        super().__init__(message, hint)
