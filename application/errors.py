"""Errors the use cases raise, each carrying its facts; api/problems.py maps them to HTTP."""


class ApplicationError(Exception):
    pass


class NotFoundError(ApplicationError):
    """No such resource in the caller's organization (another organization's looks the same)."""

    def __init__(self, resource: str, key: object) -> None:
        super().__init__(f"No {resource} '{key}'.")
        self.resource = resource
        self.key = key


class AlreadyExistsError(ApplicationError):
    def __init__(self, field: str, value: object) -> None:
        super().__init__(f"A resource with {field} '{value}' already exists.")
        self.field = field
        self.value = value


class ConcurrencyConflictError(ApplicationError):
    def __init__(self, resource: str, key: object) -> None:
        super().__init__(f"The {resource} '{key}' kept changing concurrently; try again.")
        self.resource = resource
        self.key = key


class IdempotencyKeyReusedError(ApplicationError):
    """The same Idempotency-Key came with another request body."""

    def __init__(self, key: str) -> None:
        super().__init__(f"Idempotency-Key '{key}' was already used with another request.")
        self.key = key


class IdempotencyKeyInProgressError(ApplicationError):
    """The first request with this Idempotency-Key has not finished yet."""

    def __init__(self, key: str) -> None:
        super().__init__(f"A request with Idempotency-Key '{key}' is still in progress.")
        self.key = key


class TransactionIdConflictError(ApplicationError):
    """An event reuses a stored (or earlier in its batch) transaction_id with another payload."""

    def __init__(self, index: int, transaction_id: str) -> None:
        super().__init__(
            f"Event {index}: transaction_id '{transaction_id}' already exists with another payload."
        )
        self.index = index
        self.transaction_id = transaction_id
