"""Errors the domain raises: typed, with the facts as attributes, mapped to HTTP in one table."""

from typing import Any


class DomainError(Exception):
    """A rule a caller can break."""


class InvalidValueError(DomainError):
    """A field has a value the rules refuse; `reason` is Lago's error code for it."""

    def __init__(self, field: str, reason: str, value: Any = None) -> None:
        super().__init__(f"Invalid {field}: {reason} ({value!r}).")
        self.field = field
        self.reason = reason
        self.value = value


class CurrencyMismatchError(InvalidValueError):
    """Two amounts that must share a currency do not."""

    def __init__(self, expected: str, got: str, field: str = "currency") -> None:
        super().__init__(field, "currencies_does_not_match", got)
        self.expected = expected
        self.got = got


class NotAllowedError(DomainError):
    """The object's state forbids the action (Lago's 405); `code` is Lago's code for it."""

    code = "not_allowed"
