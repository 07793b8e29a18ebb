"""``voicegw users``, ``voicegw apikeys`` and ``voicegw keys``: operator accounts, service API
keys and the session signing keys, managed from the command line.

The coroutines (``add_user``, ``create_api_key``, ...) are the operations themselves, used by
the commands and by tests; ``register(subparsers)`` adds the commands to the ``voicegw``
parser. Passwords are read from standard input (``--password-stdin``) or prompted for without
echo; an API key is printed once, on standard output, and never stored.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import math
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from gateway.records.base import ApiKeyRecord, DuplicateError, Role, Store, UserRecord
from security import apikeys
from security.apikeys import KeyPolicy, NewKey
from security.lockout import LoginGuard
from security.passwords import PasswordHasher, WeakPassword, check_new_password
from security.signing_keys import default_path, rotate

if TYPE_CHECKING:
    from gateway.settings import Settings

USERNAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
KEY_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")

Command = Callable[[argparse.Namespace, Store], Awaitable[int]]


class AdminError(Exception):
    """A command cannot be done; the message is for the operator."""


# -- operations -------------------------------------------------------------------------------


async def add_user(
    store: Store, hasher: PasswordHasher, username: str, role: Role, password: str
) -> UserRecord:
    if not USERNAME_RE.fullmatch(username):
        raise AdminError("user names are 1-64 of a-z 0-9 . _ @ - and start with a letter or digit")
    _check_password(password, username)
    now = time.time()
    user = UserRecord(
        user_id=uuid.uuid4().hex,
        username=username,
        role=role,
        password_hash=await asyncio.to_thread(hasher.hash, password),
        created_at=now,
        # Whole seconds, rounded down: a session started within this second is valid.
        password_changed_at=float(math.floor(now)),
    )
    try:
        await store.add_user(user)
    except DuplicateError:
        raise AdminError(f"user {username!r} exists") from None
    return user


async def set_password(
    store: Store, hasher: PasswordHasher, username: str, password: str
) -> UserRecord:
    """Set a new password; every session started before now stops working."""
    user = await _user(store, username)
    _check_password(password, username)
    # Rounded up: access tokens carry whole-second ``iat``, so any token issued before now
    # (even earlier this second) has ``iat < password_changed_at`` and is refused.
    changed = dataclasses.replace(
        user,
        password_hash=await asyncio.to_thread(hasher.hash, password),
        password_changed_at=float(math.ceil(time.time())),
    )
    await store.update_user(changed)
    return changed


async def set_disabled(store: Store, username: str, disabled: bool = True) -> UserRecord:
    """Disable (or enable) a user; a disabled user's sessions are refused at once."""
    user = dataclasses.replace(await _user(store, username), disabled=disabled)
    await store.update_user(user)
    return user


async def create_api_key(store: Store, name: str, role: Role) -> tuple[NewKey, ApiKeyRecord]:
    if not KEY_NAME_RE.fullmatch(name):
        raise AdminError("key names are 1-64 of letters, digits, space . _ -")
    new = apikeys.generate()
    record = ApiKeyRecord(
        key_id=new.key_id, name=name, role=role, key_hash=new.key_hash, created_at=time.time()
    )
    await store.add_api_key(record)
    return new, record


async def rotate_api_key(
    store: Store, key_id: str, policy: KeyPolicy
) -> tuple[NewKey, ApiKeyRecord, ApiKeyRecord]:
    """A new key with the old one's name and role; the old one keeps working for the grace
    period. Returns (new key, new record, old record as updated)."""
    old = await _key(store, key_id)
    now = time.time()
    if old.revoked_at is not None:
        raise AdminError(f"API key {key_id} is revoked")
    new, record = await create_api_key(store, old.name, old.role)
    old = dataclasses.replace(old, expires_at=policy.grace_end(now, old.expires_at))
    await store.update_api_key(old)
    return new, record, old


async def revoke_api_key(store: Store, key_id: str) -> ApiKeyRecord:
    key = await _key(store, key_id)
    if key.revoked_at is None:
        key = dataclasses.replace(key, revoked_at=time.time())
        await store.update_api_key(key)
    return key


async def _user(store: Store, username: str) -> UserRecord:
    user = await store.get_user(username)
    if user is None:
        raise AdminError(f"no user {username!r}")
    return user


async def unlock_user(store: Store, username: str) -> tuple[UserRecord, int]:
    """Forget every failed login of ``username`` from every network (its lockout and
    throttle end at once); return the user and how many failures were forgotten."""
    user = await _user(store, username)
    return user, await LoginGuard(store).unlock(user.username)


async def _key(store: Store, key_id: str) -> ApiKeyRecord:
    key = await store.get_api_key(key_id.removeprefix(apikeys.PREFIX))
    if key is None:
        raise AdminError(f"no API key {key_id!r}")
    return key


def _check_password(password: str, username: str) -> None:
    try:
        check_new_password(password, username)
    except WeakPassword as exc:
        raise AdminError(str(exc)) from None


# -- commands ---------------------------------------------------------------------------------


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    store_factory: Callable[[object], Store] | None = None,
) -> None:
    """Add ``users``, ``apikeys`` and ``keys`` to the ``voicegw`` parser. ``store_factory``
    builds the store from the settings (default: SQLite in ``VOICEGW_DATA_DIR``)."""
    roles = [r.value for r in Role]
    factory = store_factory or _sqlite_store

    def bind(p: argparse.ArgumentParser, fn: Command, action: str | None = None) -> None:
        """``action``: the audit action of a command that changes something (its failure is
        recorded too); commands that only read record nothing."""
        p.set_defaults(func=lambda args: _run(args, fn, factory), audit_action=action)

    users = subparsers.add_parser("users", help="operator accounts")
    usub = users.add_subparsers(dest="what", required=True, help="what to do")
    p = usub.add_parser("add", help="add a user")
    p.add_argument("name", help="user name (a-z 0-9 . _ @ -)")
    p.add_argument("--role", choices=roles, required=True, help=f"one of {', '.join(roles)}")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    bind(p, _users_add, "user.create")
    p = usub.add_parser("list", help="list users")
    bind(p, _users_list)
    p = usub.add_parser("disable", help="disable a user (their sessions stop working)")
    p.add_argument("name", help="the user")
    p.add_argument("--enable", action="store_true", help="enable again instead")
    bind(p, _users_disable, "user.disable")
    p = usub.add_parser("passwd", help="set a user's password (ends their sessions)")
    p.add_argument("name", help="the user")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    bind(p, _users_passwd, "user.password")
    p = usub.add_parser("unlock", help="forget a user's failed logins (ends a lockout at once)")
    p.add_argument("name", help="the user")
    bind(p, _users_unlock, "user.unlock")

    keys = subparsers.add_parser("apikeys", help="service API keys")
    ksub = keys.add_subparsers(dest="what", required=True, help="what to do")
    p = ksub.add_parser("create", help="create a key (printed once)")
    p.add_argument("--name", required=True, help="what the key is for (shown in lists)")
    p.add_argument("--role", choices=roles, required=True, help=f"one of {', '.join(roles)}")
    bind(p, _keys_create, "apikey.create")
    p = ksub.add_parser("list", help="list keys (ids, never secrets)")
    bind(p, _keys_list)
    p = ksub.add_parser("revoke", help="revoke a key at once")
    p.add_argument("key_id", help="the key's id (from apikeys list)")
    bind(p, _keys_revoke, "apikey.revoke")
    p = ksub.add_parser("rotate", help="replace a key; the old one works for the grace period")
    p.add_argument("key_id", help="the key's id (from apikeys list)")
    bind(p, _keys_rotate, "apikey.rotate")

    signing = subparsers.add_parser("keys", help="session signing keys")
    ssub = signing.add_subparsers(dest="what", required=True, help="what to do")
    p = ssub.add_parser("rotate", help="new signing key; the old one verifies until its tokens end")
    p.add_argument("--file", type=Path, default=None, help="key file (default: from settings)")
    bind(p, _keys_rotate_signing, "signing_key.rotate")
    p = ssub.add_parser(
        "rotate-data", help="re-encrypt stored numbers and transcripts with the active data key"
    )
    p.add_argument("--batch", type=int, default=500, help="records per transaction (%(default)s)")
    bind(p, _rotate_data, "data_key.reencrypt")

    audit = subparsers.add_parser("audit", help="the audit trail")
    asub = audit.add_subparsers(dest="what", required=True, help="what to do")
    p = asub.add_parser("verify", help="walk the hash chain; report the first broken link")
    bind(p, _audit_verify)


def _settings() -> Settings:
    from gateway.cli.base import load_settings

    return load_settings()


def _sqlite_store(settings: Settings) -> Store:
    from gateway.services import open_store

    return open_store(settings)


async def _rotate_data(args: argparse.Namespace, store: Store) -> int:
    from gateway.records.privacy import rotate_transcripts
    from gateway.services import load_data_keys
    from security.crypto import rotate_data

    settings: Settings = args.settings
    keyring, _ = load_data_keys(settings)
    changed = await rotate_data(store, keyring, args.batch)
    turns = await rotate_transcripts(store, keyring, args.batch)
    await _audit(
        args,
        entity_type="data_key",
        entity_id=keyring.active_key_id,
        detail={"records": changed, "transcript_turns": turns},
    )
    print(
        f"re-encrypted {changed} call records and {turns} transcript turns "
        f"with key {keyring.active_key_id}"
    )
    return 0


async def _audit_verify(args: argparse.Namespace, store: Store) -> int:
    from nacl.signing import VerifyKey

    from gateway.compliance.evidence import verify_and_record
    from gateway.services import settings_signing_ring

    settings: Settings = args.settings
    ring = settings_signing_ring(settings)
    # The result is kept as the chain's last verification (compliance evidence).
    result = await verify_and_record(store, (VerifyKey(key.public_raw) for key in ring.keys()))
    if result.ok:
        print(
            f"audit trail intact: {result.events} events, {result.checkpoints} checkpoints, "
            f"{result.signatures_verified} signatures verified"
        )
        return 0
    print(f"audit trail BROKEN at event {result.first_bad_seq}: {result.reason}")
    return 1


def _run(
    args: argparse.Namespace,
    fn: Command,
    factory: Callable[[Settings], Store],
) -> int:
    settings = _settings()
    args.settings = settings

    async def main() -> int:
        store = factory(settings)
        await store.open()
        try:
            args.store = store
            try:
                return await fn(args, store)
            except AdminError as exc:
                if args.audit_action:
                    await _audit(args, "failure", detail={"reason": str(exc)[:120]})
                raise
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except AdminError as exc:
        print(f"voicegw: {exc}", file=sys.stderr)
        return 1


def _actor() -> str:
    """Who ran the command: ``cli:`` and the operating-system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no user name (a container without a passwd entry)
        return "cli"


async def _audit(
    args: argparse.Namespace,
    outcome: str = "success",
    *,
    entity_type: str | None = None,
    entity_id: str | None = None,
    detail: dict[str, str | int | None] | None = None,
) -> None:
    """Record the running command in the audit trail (never a password or key secret).
    The auditor is opened here, after the command: ``keys rotate`` must find the key file as
    the command found it, and a new key signs the checkpoints from then on."""
    from gateway.services import open_auditor

    await open_auditor(args.settings, args.store).record(
        args.audit_action,
        outcome,
        actor=_actor(),
        entity_type=entity_type,
        entity_id=entity_id,
        detail=detail,
    )


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not sys.stdin.isatty():
        # getpass would warn that it cannot hide the input and read it in clear.
        raise AdminError("no terminal to ask for the password: pipe it in with --password-stdin")
    else:
        try:
            password = getpass.getpass("password: ")
            if getpass.getpass("again: ") != password:
                raise AdminError("passwords differ")
        except EOFError:  # Ctrl-D at the prompt
            raise AdminError("no password given") from None
    if not password:
        raise AdminError("no password given")
    return password


async def _users_add(args: argparse.Namespace, store: Store) -> int:
    user = await add_user(store, PasswordHasher(), args.name, Role(args.role), _read_password(args))
    await _audit(
        args, entity_type="user", entity_id=user.username, detail={"role": user.role.value}
    )
    print(f"added {user.username} ({user.role.value})")
    return 0


async def _users_list(args: argparse.Namespace, store: Store) -> int:
    print(f"{'NAME':<24} {'ROLE':<9} {'STATE':<9} CREATED")
    for user in sorted(await store.list_users(), key=lambda u: u.username):
        state = "disabled" if user.disabled else "active"
        print(f"{user.username:<24} {user.role.value:<9} {state:<9} {_when(user.created_at)}")
    return 0


async def _users_disable(args: argparse.Namespace, store: Store) -> int:
    user = await set_disabled(store, args.name, not args.enable)
    await _audit(
        args, entity_type="user", entity_id=user.username, detail={"disabled": user.disabled}
    )
    print(f"{user.username} {'disabled' if user.disabled else 'enabled'}")
    return 0


async def _users_passwd(args: argparse.Namespace, store: Store) -> int:
    user = await set_password(store, PasswordHasher(), args.name, _read_password(args))
    await _audit(args, entity_type="user", entity_id=user.username)
    print(f"password of {user.username} changed; their sessions have ended")
    return 0


async def _users_unlock(args: argparse.Namespace, store: Store) -> int:
    user, cleared = await unlock_user(store, args.name)
    await _audit(args, entity_type="user", entity_id=user.username, detail={"failures": cleared})
    print(f"{user.username} unlocked ({cleared} failed logins forgotten)")
    return 0


async def _keys_create(args: argparse.Namespace, store: Store) -> int:
    new, record = await create_api_key(store, args.name, Role(args.role))
    await _audit(
        args,
        entity_type="api_key",
        entity_id=record.key_id,
        detail={"name": record.name, "role": record.role.value},
    )
    print(f"created API key {record.key_id} ({record.role.value}); shown once:", file=sys.stderr)
    print(new.token)
    return 0


async def _keys_list(args: argparse.Namespace, store: Store) -> int:
    policy = _key_policy(args.settings)
    now = time.time()
    print(f"{'KEY ID':<13} {'NAME':<20} {'ROLE':<9} {'STATE':<13} {'CREATED':<17} LAST USED")
    for key in sorted(await store.list_api_keys(), key=lambda k: k.created_at):
        state = policy.state(
            created_at=key.created_at, expires_at=key.expires_at, revoked_at=key.revoked_at, now=now
        )
        print(
            f"{key.key_id:<13} {key.name[:20]:<20} {key.role.value:<9} {state.value:<13} "
            f"{_when(key.created_at):<17} {_when(key.last_used_at)}"
        )
    return 0


async def _keys_revoke(args: argparse.Namespace, store: Store) -> int:
    key = await revoke_api_key(store, args.key_id)
    await _audit(args, entity_type="api_key", entity_id=key.key_id)
    print(f"revoked API key {key.key_id}")
    return 0


async def _keys_rotate(args: argparse.Namespace, store: Store) -> int:
    new, record, old = await rotate_api_key(store, args.key_id, _key_policy(args.settings))
    await _audit(
        args,
        entity_type="api_key",
        entity_id=record.key_id,
        detail={"replaces": old.key_id, "old_expires_at": _when(old.expires_at)},
    )
    print(
        f"new API key {record.key_id} replaces {old.key_id}, which works until "
        f"{_when(old.expires_at)}; shown once:",
        file=sys.stderr,
    )
    print(new.token)
    return 0


async def _keys_rotate_signing(args: argparse.Namespace, store: Store) -> int:
    settings: Settings = args.settings
    path = args.file or settings.signing_key_file or default_path(settings.data_dir)
    ttl = settings.session_ttl_s
    key = rotate(Path(path), ttl)
    await _audit(args, entity_type="signing_key", entity_id=key.kid)
    print(f"new signing key {key.kid} in {path}; the previous one verifies for {ttl} s more")
    return 0


def _key_policy(settings: Settings) -> KeyPolicy:
    days = 86400
    return KeyPolicy(
        max_age_s=settings.api_key_max_age_days * days,
        grace_s=settings.api_key_grace_days * days,
    )


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(at))
