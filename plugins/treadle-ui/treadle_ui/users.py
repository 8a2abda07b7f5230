"""Reviewers and their tokens: a JSON file of names and scrypt hashes, never the tokens.

    {"users": {"ada": {"token_hash": "scrypt$16384$8$1$<salt>$<hash>", "added": "..."}}}

Each hash has its own random salt; verifying a token costs one scrypt (about 16 MiB and
a few tens of milliseconds), paid once at sign-in: a signed session cookie carries the
name afterwards.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# scrypt cost: n=2**14, r=8, p=1 is the interactive-login setting of the scrypt paper
# and of Python's own docs; 16 MiB of memory per verification.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_NAME = 80
TOKEN_PREFIX = "tdl_"


class UsersFileError(Exception):
    """The users file is missing, unreadable or malformed; the message names the fix."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe, with a prefix that makes it recognisable."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` for ``token`` with a new random salt."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(token, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _scrypt(token: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    maxmem = 128 * n * r * p + 1024 * 1024  # what this cost needs, plus room
    return hashlib.scrypt(token.encode(), salt=salt, n=n, r=r, p=p, dklen=size, maxmem=maxmem)


def verify_token(token: str, stored: str) -> bool:
    """Whether ``token`` hashes to ``stored`` (compared in constant time)."""
    _, n, r, p, salt, digest = _parse(stored)
    expected = _unb64(digest)
    got = _scrypt(token, _unb64(salt), int(n), int(r), int(p), len(expected))
    return hmac.compare_digest(got, expected)


def _parse(stored: str) -> list[str]:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(x.isdigit() for x in parts[1:4]):
        raise ValueError("not a scrypt$n$r$p$salt$hash token hash")
    return parts


def check_name(name: str) -> str:
    """The name as it will be recorded on decisions, or ValueError saying what is wrong."""
    clean = name.strip()
    if not clean:
        raise ValueError("a reviewer's name cannot be empty")
    if len(clean) > MAX_NAME:
        raise ValueError(f"a reviewer's name is at most {MAX_NAME} characters")
    if any(unicodedata.category(c).startswith("C") for c in clean):
        raise ValueError("a reviewer's name cannot contain control characters")
    return clean


def read_users(path: Path) -> dict[str, dict[str, Any]]:
    """Name -> entry (``token_hash``, ``added``) from the file; {} when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsersFileError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsersFileError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    users = doc.get("users") if isinstance(doc, dict) else None
    if not isinstance(users, dict):
        raise UsersFileError(f'{path}: expected {{"users": {{NAME: {{"token_hash": ...}}}}}}')
    for name, entry in users.items():
        stored = entry.get("token_hash") if isinstance(entry, dict) else None
        try:
            _parse(stored if isinstance(stored, str) else "")
        except ValueError:
            raise UsersFileError(
                f"{path}: user {name!r} has no valid token_hash "
                f"(set a new token with 'treadle ui users add {name} --file {path} --replace')"
            ) from None
    return users


def write_users(path: Path, users: dict[str, dict[str, Any]]) -> None:
    """Replace the file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"users": users}, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_user(path: Path, name: str, *, replace: bool = False) -> str:
    """Give ``name`` a new token (stored hashed) and return it: the only time it is shown."""
    name = check_name(name)
    users = read_users(path)
    if name in users and not replace:
        raise UsersFileError(
            f"{path}: {name!r} already has a token (--replace gives them a new one, "
            "which signs out their sessions)"
        )
    token = new_token()
    added = datetime.now(UTC).replace(microsecond=0).isoformat()
    users[name] = {"token_hash": hash_token(token), "added": added}
    write_users(path, users)
    return token


def remove_user(path: Path, name: str) -> None:
    users = read_users(path)
    if name not in users:
        known = ", ".join(sorted(users)) or "none"
        raise UsersFileError(f"{path}: no user {name!r} (known: {known})")
    del users[name]
    write_users(path, users)


@functools.cache
def _dummy_hash() -> str:
    return hash_token("treadle-ui: no such user")


@dataclass(frozen=True)
class _Loaded:
    stamp: tuple[int, int]
    users: dict[str, dict[str, Any]]


class Users:
    """The users file as the console reads it: re-read when it changes on disk, so adding,
    replacing or removing a user takes effect without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._loaded: _Loaded | None = None
        if not path.exists():
            raise UsersFileError(
                f"--users {path}: no such file "
                f"(create it with 'treadle ui users add NAME --file {path}')"
            )
        self._current()

    def _current(self) -> dict[str, dict[str, Any]]:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns)  # written by os.replace: a new inode each time
        except OSError:
            stamp = (0, 0)
        if self._loaded is None or self._loaded.stamp != stamp:
            self._loaded = _Loaded(stamp, read_users(self.path))
        return self._loaded.users

    def names(self) -> list[str]:
        return sorted(self._current())

    def verify(self, name: str, token: str) -> bool:
        """Whether ``token`` is ``name``'s. Slow by design: call it off the event loop."""
        entry = self._current().get(name.strip())
        # An unknown name costs as much as a known one: no timing hint of who exists.
        stored = entry["token_hash"] if entry else _dummy_hash()
        ok = verify_token(token, stored)
        return ok and entry is not None

    def fingerprint(self, name: str) -> str | None:
        """A short digest of ``name``'s stored hash; None once they are removed. A session
        records it, so a replaced token or a removed user ends their sessions."""
        entry = self._current().get(name)
        if entry is None:
            return None
        return hashlib.sha256(entry["token_hash"].encode()).hexdigest()[:16]
