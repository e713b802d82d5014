"""Every bound Tally enforces, each with its reason."""

from typing import Final

# PostgreSQL BIGINT holds 9.2e18: room to add a million maximal amounts without overflow.
AMOUNT_CENTS_MAX: Final = 10**12 * 100
# Lago stores prices with 15 fractional digits; a token can cost 0.0000005 EUR.
DECIMAL_PLACES_MAX: Final = 15
# Integer digits of any decimal we accept; together with the places this fits NUMERIC(40, 15).
DECIMAL_DIGITS_MAX: Final = 24
# Lago's default batch size; a setting changes it (TALLY_EVENTS_BATCH_MAX), up to the limit, which
# keeps one batch's transaction short (rollup rows stay locked for milliseconds, not seconds).
EVENTS_BATCH_MAX: Final = 100
EVENTS_BATCH_MAX_LIMIT: Final = 10_000
# Lago's external ids and codes are strings; 255 is its column width.
KEY_LENGTH_MAX: Final = 255
# Free text (names, addresses): long enough for legal names, short enough to keep events small.
TEXT_LENGTH_MAX: Final = 1000
# Attempts of a command that reloads and decides again after each concurrent write before giving
# up with 409: every failed attempt means another writer succeeded, so n racing writers need n.
COMMAND_RETRIES_MAX: Final = 32
# Lago's default page size and the largest page we serve.
PER_PAGE_DEFAULT: Final = 100
PER_PAGE_MAX: Final = 1000
# How far ahead of its receipt an event's timestamp may be (Stripe's 5 minutes): clock skew, not
# future usage, which would otherwise be billable before it happens.
EVENT_FUTURE_S_MAX: Final = 5 * 60
