"""Request and response helpers shared by the controllers: body decoding, pages, Lago's formats."""

import functools
import re
from collections.abc import Hashable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar, cast

import msgspec

from api.problems import BadQueryError, MissingRootKeyError, RequestBodyError
from domain.errors import InvalidValueError
from domain.limits import PER_PAGE_DEFAULT, PER_PAGE_MAX

T = TypeVar("T")

# A page past this holds nothing (PER_PAGE_MAX x PAGE_MAX rows), and its offset still fits the
# stores' 64-bit integers: a larger one is refused, never an overflow (R9 found it).
PAGE_MAX = 2**31 - 1

_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`(?: - at `(?P<at>[^`]+)`)?")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`(?: - at `(?P<at>[^`]+)`)?")
_AT = re.compile(r" - at `(?P<at>[^`]+)`$")


class Input(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Request bodies: keyword-only, and a field we do not support is an error."""


class Envelope(msgspec.Struct, kw_only=True):
    """A body's wrapper around Lago's root key; other top-level keys are ignored, as Lago does."""


class Output(msgspec.Struct, kw_only=True):
    """Response bodies."""


def decode_body(data: bytes, cls: type[T], root: str | None = None) -> T:
    """Decode a JSON body into cls, with Lago's 400 for a missing root and 422 naming a field.

    JSON numbers reach Decimal fields from their literal text, never through a float.
    """
    try:
        decoded: T = _decoder(cast(Hashable, cls)).decode(data or b"{}")
        return decoded
    except msgspec.ValidationError as error:
        raise _body_error(str(error), root) from None
    except msgspec.DecodeError as error:
        raise (
            MissingRootKeyError(root or "body")
            if root
            else RequestBodyError("body", "invalid_format", str(error))
        ) from None


@functools.cache
def _decoder(cls: Any) -> "msgspec.json.Decoder[Any]":
    # float_hook: a JSON number in a free-form field (charge properties, event properties)
    # becomes a Decimal from its literal text, never a float.
    return msgspec.json.Decoder(cls, dec_hook=_dec_hook, float_hook=Decimal)


def _dec_hook(cls: type, value: Any) -> Any:
    raise NotImplementedError(cls)


def field_path(at: str | None, root: str | None) -> str:
    """`$.customer.billing_configuration.sync` → `billing_configuration.sync`; `[3]` → `3`."""
    path = (at or "$").removeprefix("$")
    path = re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".")
    if root and (path == root or path.startswith(root + ".")):
        path = path[len(root) + 1 :]
    return path


def _body_error(message: str, root: str | None) -> Exception:
    if match := _MISSING.match(message):
        at = match.group("at")
        if root and (at in (None, "$")) and match.group("field") == root:
            return MissingRootKeyError(root)
        return RequestBodyError(
            _join(field_path(at, root), match.group("field")), "value_is_mandatory", message
        )
    if match := _UNKNOWN.match(message):
        return RequestBodyError(
            _join(field_path(match.group("at"), root), match.group("field")),
            "unsupported_field",
            message,
        )
    at_match = _AT.search(message)
    at = at_match.group("at") if at_match else None
    path = field_path(at, root)
    if root and path == "" and at == f"$.{root}":
        return MissingRootKeyError(root)  # The root key is null or not an object.
    return RequestBodyError(path or "body", "value_is_invalid", message)


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def iso(instant: datetime | None) -> str | None:
    """Lago's timestamp format: ISO 8601 in UTC with a Z, to the second."""
    if instant is None:
        return None
    utc = instant.astimezone(UTC)
    if utc.year < 1000:  # isoformat pads the year where strftime may not: keep strftime's.
        return utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return utc.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


@functools.lru_cache(maxsize=16_384)  # Events come in bursts that share their second.
def iso_ms(instant: datetime) -> str:
    """Event timestamps keep milliseconds (truncated), as Lago's do."""
    if instant.tzinfo is UTC and instant.year >= 1000:  # Every event's: "+00:00" becomes "Z".
        return instant.isoformat(timespec="milliseconds")[:-6] + "Z"
    utc = instant.astimezone(UTC)
    if utc.year < 1000:
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    return utc.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def iso_date(day: date | None) -> str | None:
    return day.isoformat() if day is not None else None


def decimal_string(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


class PaginationMeta(Output):
    current_page: int
    next_page: int | None
    prev_page: int | None
    total_pages: int
    total_count: int


def pagination(page: int | None, per_page: int | None) -> tuple[int, int]:
    page = 1 if page is None else page
    per_page = PER_PAGE_DEFAULT if per_page is None else per_page
    if not 1 <= page <= PAGE_MAX:
        raise BadQueryError("page")
    if not 1 <= per_page <= PER_PAGE_MAX:
        raise BadQueryError("per_page")
    return page, per_page


def meta(page: int, per_page: int, total_count: int) -> PaginationMeta:
    """Lago's pagination meta; with no results it reports page 0, as Lago does."""
    total_pages = -(-total_count // per_page)
    if total_count == 0:
        return PaginationMeta(
            current_page=0, next_page=None, prev_page=None, total_pages=0, total_count=0
        )
    return PaginationMeta(
        current_page=page,
        next_page=page + 1 if page < total_pages else None,
        prev_page=page - 1 if page > 1 else None,
        total_pages=total_pages,
        total_count=total_count,
    )


def parse_bool(value: str | None, field: str, default: bool) -> bool:
    """Query booleans arrive as true/false or Python's True/False."""
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise BadQueryError(field)


def parse_instant(value: str | None, field: str) -> datetime | None:
    """An ISO 8601 instant from Lago's wire; without an offset it is UTC, as Lago reads it."""
    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidValueError(field, "invalid_date", value) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC)
