"""Password hashing with scrypt (memory-hard, in the standard library).

A hash is a self-describing string ``scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>`` (base64url,
no padding), so the cost can be raised later: ``needs_rehash`` says when a stored hash is
weaker than the current parameters. The default (N = 2**15, r = 8, p = 1) uses 32 MiB and
takes tens of milliseconds; callers on an event loop run ``hash``/``verify`` in a thread.

``verify_dummy`` does the same work as a real verification against a hash no password
matches, so a login for an unknown user costs what a login for a known one does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

PREFIX: Final = "scrypt"
SALT_BYTES: Final = 16
HASH_BYTES: Final = 32
MAX_PASSWORD_BYTES: Final = 1024
MIN_PASSWORD_CHARS: Final = 12


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class WeakPassword(ValueError):
    """A new password is refused; the message says why."""


@dataclass(frozen=True, slots=True)
class PasswordHasher:
    """scrypt with cost ``2**log_n``, block size ``r``, parallelism ``p``."""

    log_n: int = 15
    r: int = 8
    p: int = 1

    def hash(self, password: str) -> str:
        salt = secrets.token_bytes(SALT_BYTES)
        derived = self._derive(password, salt, self.log_n, self.r, self.p)
        return f"{PREFIX}$ln={self.log_n},r={self.r},p={self.p}${_b64(salt)}${_b64(derived)}"

    def verify(self, password: str, encoded: str) -> bool:
        """Whether ``password`` matches ``encoded``. Never raises on a malformed hash."""
        try:
            scheme, params, salt_text, hash_text = encoded.split("$")
            if scheme != PREFIX:
                return False
            values = dict(item.split("=", 1) for item in params.split(","))
            log_n, r, p = int(values["ln"]), int(values["r"]), int(values["p"])
            if not (1 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
                return False
            salt, expected = _unb64(salt_text), _unb64(hash_text)
        except (ValueError, KeyError):
            return False
        derived = self._derive(password, salt, log_n, r, p, len(expected))
        return hmac.compare_digest(derived, expected)

    def verify_dummy(self, password: str) -> bool:
        """The work of one verification, for a user that does not exist. Always False."""
        self._derive(password, _DUMMY_SALT, self.log_n, self.r, self.p)
        return False

    def needs_rehash(self, encoded: str) -> bool:
        return not encoded.startswith(f"{PREFIX}$ln={self.log_n},r={self.r},p={self.p}$")

    @staticmethod
    def _derive(
        password: str, salt: bytes, log_n: int, r: int, p: int, length: int = HASH_BYTES
    ) -> bytes:
        secret = password.encode("utf-8", "surrogatepass")[:MAX_PASSWORD_BYTES]
        n = 1 << log_n
        return hashlib.scrypt(
            secret, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r * p + (1 << 20), dklen=length
        )


_DUMMY_SALT: Final = secrets.token_bytes(SALT_BYTES)


def check_new_password(password: str, username: str) -> None:
    """Raise ``WeakPassword`` unless ``password`` is acceptable for a new credential."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise WeakPassword(f"password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        raise WeakPassword(f"password must be at most {MAX_PASSWORD_BYTES} bytes")
    if password.strip().lower() == username.strip().lower():
        raise WeakPassword("password must differ from the user name")
