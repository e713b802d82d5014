"""Sealing secrets at rest with a key held outside the database (ADR 0021).

Payment-provider secrets (Stripe secret keys, webhook signing secrets) are stored sealed:
AES-256-GCM under the key of TALLY_SECRET_KEY (32 random bytes, as 64 hex digits or base64),
authenticated with what they belong to (the organization and connection code), so neither a
copy of the database nor a row moved to another connection yields a usable secret. Without the
setting, the key is the file TALLY_SECRET_KEY_FILE names, created on first use (0600); by
default `secret.key` beside the SQLite database, or `~/.config/tally/secret.key` (under
XDG_CONFIG_HOME when set) for PostgreSQL, where several machines must instead share one
TALLY_SECRET_KEY. Keys retired by a rotation stay readable through
TALLY_SECRET_KEY_PREVIOUS (comma-separated); stores seal again under the current key what an
older key (or no key: rows written before sealing) left.

A sealed value is `tally-sealed:v1:<key id>:<base64(nonce ‖ ciphertext)>`; the key id is a hash
of the key, never the key.
"""

import base64
import binascii
import hashlib
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from adapters.settings import Settings, SettingsError

logger = logging.getLogger("tally.secret_seal")

PREFIX: Final = "tally-sealed:v1:"
KEY_BYTES: Final = 32  # AES-256.
NONCE_BYTES: Final = 12
KEY_FILE_NAME: Final = "secret.key"


class SealedWithUnknownKeyError(Exception):
    """A value sealed under a key this process does not have (a rotated key not listed in
    TALLY_SECRET_KEY_PREVIOUS, or another machine's key file)."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"tally-secret-key-id:" + key).hexdigest()[:16]


def parse_key(value: str, name: str = "TALLY_SECRET_KEY") -> bytes:
    """32 bytes, written as 64 hex digits or as base64 (standard or URL-safe)."""
    text = value.strip()
    decoded: bytes | None = None
    if len(text) == 2 * KEY_BYTES:
        try:
            decoded = bytes.fromhex(text)
        except ValueError:
            decoded = None
    if decoded is None:
        try:
            padded = text + "=" * (-len(text) % 4)
            decoded = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            decoded = None
    if decoded is None or len(decoded) != KEY_BYTES:
        raise SettingsError(
            f"{name}: 32 random bytes, as 64 hex digits or base64, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`."
        )
    return decoded


class SecretSealer:
    """AES-256-GCM under the current key; older keys only unseal."""

    def __init__(
        self,
        key: bytes | None = None,
        previous: Sequence[bytes] = (),
        key_file: Path | None = None,
    ) -> None:
        assert key is not None or key_file is not None, "a key or a key file"
        assert key is None or len(key) == KEY_BYTES, len(key or b"")
        self._key = key
        self._previous = tuple(previous)
        self._key_file = key_file
        self._lock = threading.Lock()

    @property
    def current_key_id(self) -> str:
        return key_id(self._current())

    def seal(self, plaintext: bytes, context: bytes) -> str:
        key = self._current()
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, plaintext, context)
        return f"{PREFIX}{key_id(key)}:{base64.b64encode(nonce + sealed).decode()}"

    def unseal(self, value: str, context: bytes) -> bytes:
        assert is_sealed(value), "not a sealed value"
        wanted, _, body = value.removeprefix(PREFIX).partition(":")
        for key in (self._current(), *self._previous):
            if key_id(key) == wanted:
                raw = base64.b64decode(body)
                # A wrong tag is corrupt storage or a moved row: InvalidTag propagates.
                return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context)
        raise SealedWithUnknownKeyError(
            f"A secret was sealed with key {wanted}, which is neither TALLY_SECRET_KEY nor in "
            "TALLY_SECRET_KEY_PREVIOUS."
        )

    def needs_resealing(self, value: str) -> bool:
        """Stored in clear (before sealing existed) or under a retired key."""
        return not is_sealed(value) or not value.startswith(f"{PREFIX}{self.current_key_id}:")

    def _current(self) -> bytes:
        with self._lock:
            if self._key is None:
                assert self._key_file is not None
                self._key = _key_from_file(self._key_file)
            return self._key


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def _key_from_file(path: Path) -> bytes:
    """The key in `path`, created (0600, exclusively: two processes agree) when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return parse_key(path.read_text(), str(path))
    with os.fdopen(descriptor, "w") as file:
        file.write(os.urandom(KEY_BYTES).hex() + "\n")
    logger.warning(
        "TALLY_SECRET_KEY is not set: payment-provider secrets are sealed with a new key in %s. "
        "Back it up apart from the database; without it the secrets cannot be read.",
        path,
    )
    return parse_key(path.read_text(), str(path))


def sealer_from_env(settings: Settings, environ: Mapping[str, str] | None = None) -> SecretSealer:
    """TALLY_SECRET_KEY (and TALLY_SECRET_KEY_PREVIOUS), else a key file (module docstring)."""
    environ = os.environ if environ is None else environ
    previous = [
        parse_key(part, "TALLY_SECRET_KEY_PREVIOUS")
        for part in environ.get("TALLY_SECRET_KEY_PREVIOUS", "").split(",")
        if part.strip()
    ]
    value = environ.get("TALLY_SECRET_KEY", "").strip()
    if value:
        return SecretSealer(parse_key(value), previous)
    named = environ.get("TALLY_SECRET_KEY_FILE", "").strip()
    if named:
        return SecretSealer(None, previous, key_file=Path(named).expanduser())
    if settings.sqlite_path is not None:
        return SecretSealer(None, previous, key_file=settings.sqlite_path.parent / KEY_FILE_NAME)
    # Not the working directory: `tally serve`, `tally worker` and the CLI may run from others.
    config = environ.get("XDG_CONFIG_HOME", "").strip() or str(Path.home() / ".config")
    return SecretSealer(None, previous, key_file=Path(config) / "tally" / KEY_FILE_NAME)
