"""Key and password hashing: pure functions, no I/O.

API keys carry 238 bits of randomness, so a fast SHA-256 is the right hash for them (it lets a
key be found by its hash in one indexed lookup); passwords are low-entropy and get argon2.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

from pwdlib import PasswordHash

KEY_PREFIX = "pa_live_"
KEY_RANDOM_CHARS = 40
#: How much of a key is shown back to people: enough to tell keys apart, useless to an attacker.
VISIBLE_PREFIX_CHARS = 12
KEY_RE = re.compile(r"^pa_live_[A-Za-z0-9]{32,128}$")
_BASE62 = string.ascii_letters + string.digits

_passwords = PasswordHash.recommended()


def new_api_key() -> str:
    return KEY_PREFIX + "".join(secrets.choice(_BASE62) for _ in range(KEY_RANDOM_CHARS))


def looks_like_api_key(value: str) -> bool:
    return KEY_RE.match(value) is not None


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def visible_prefix(key: str) -> str:
    return key[:VISIBLE_PREFIX_CHARS]


def hash_password(password: str) -> str:
    return _passwords.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    if password_hash is None:
        # Spend the same time as a real check so a missing account is not told apart.
        _passwords.verify(password, _DUMMY_HASH)
        return False
    return _passwords.verify(password, password_hash)


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


_DUMMY_HASH = _passwords.hash(secrets.token_hex(16))
