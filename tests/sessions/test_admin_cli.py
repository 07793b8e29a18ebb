"""``voicegw users|apikeys|keys`` through ``gateway.cli.admin.register``, against a real SQLite
file, and the password hashing underneath."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
from pathlib import Path

import pytest

from gateway.cli import admin as admin_cli
from gateway.records.base import Role
from gateway.records.sqlite import SqliteStore
from security import apikeys
from security.passwords import PasswordHasher


@pytest.fixture
def voicegw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    for name in [n for n in os.environ if n.startswith("VOICEGW_")]:
        if not name.startswith("VOICEGW_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VOICEGW_DATA_DIR", str(tmp_path / "data"))

    def run(*argv: str, stdin: str = "") -> int:
        parser = argparse.ArgumentParser(prog="voicegw")
        admin_cli.register(parser.add_subparsers(dest="command", required=True))
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        args = parser.parse_args(argv)
        result: int = args.func(args)
        return result

    return run


def users(tmp_path: Path) -> dict[str, tuple[Role, bool, str]]:
    async def read() -> dict[str, tuple[Role, bool, str]]:
        store = SqliteStore(tmp_path / "data" / "voicegw.sqlite3")
        await store.open()
        try:
            return {
                u.username: (u.role, u.disabled, u.password_hash) for u in await store.list_users()
            }
        finally:
            await store.close()

    return asyncio.run(read())


def test_users_commands(voicegw, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert (
        voicegw(
            "users",
            "add",
            "ada",
            "--role",
            "admin",
            "--password-stdin",
            stdin="a long enough password\n",
        )
        == 0
    )
    role, disabled, hashed = users(tmp_path)["ada"]
    assert role is Role.ADMIN and not disabled and hashed.startswith("scrypt$ln=15,r=8,p=1$")
    assert "a long enough password" not in hashed
    assert (
        voicegw(
            "users",
            "add",
            "ada",
            "--role",
            "admin",
            "--password-stdin",
            stdin="another password!\n",
        )
        == 1
    )
    assert "exists" in capsys.readouterr().err
    assert (
        voicegw("users", "add", "bob", "--role", "operator", "--password-stdin", stdin="short\n")
        == 1
    )
    assert (
        voicegw(
            "users",
            "add",
            "Bad Name",
            "--role",
            "operator",
            "--password-stdin",
            stdin="x" * 20 + "\n",
        )
        == 1
    )
    assert voicegw("users", "disable", "ada") == 0
    assert users(tmp_path)["ada"][1] is True
    assert (
        voicegw("users", "passwd", "ada", "--password-stdin", stdin="a different password\n") == 0
    )
    assert users(tmp_path)["ada"][2] != hashed
    capsys.readouterr()
    assert voicegw("users", "list") == 0
    out = capsys.readouterr().out
    assert "ada" in out and "disabled" in out and "scrypt" not in out
    assert (
        voicegw("users", "passwd", "nobody", "--password-stdin", stdin="a different password\n")
        == 1
    )


def test_apikeys_commands(voicegw, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert voicegw("apikeys", "create", "--name", "billing", "--role", "operator") == 0
    captured = capsys.readouterr()
    token = captured.out.strip()
    key_id, _ = apikeys.parse(token) or ("", "")
    assert key_id and "shown once" in captured.err and token not in captured.err
    assert voicegw("apikeys", "list") == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "active" in listing and token.rsplit("_", 1)[1] not in listing
    assert voicegw("apikeys", "rotate", key_id) == 0
    rotated = capsys.readouterr()
    assert apikeys.parse(rotated.out.strip()) is not None and "works until" in rotated.err
    assert voicegw("apikeys", "list") == 0
    assert "grace" in capsys.readouterr().out
    assert voicegw("apikeys", "revoke", key_id) == 0
    assert voicegw("apikeys", "rotate", key_id) == 1  # a revoked key cannot be rotated
    assert voicegw("apikeys", "revoke", "nope") == 1


def test_keys_rotate(voicegw, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "data" / "signing-keys.json"
    assert voicegw("keys", "rotate") == 0
    assert voicegw("keys", "rotate") == 0
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    keys = json.loads(path.read_text())["keys"]
    assert len(keys) == 2 and "private" in keys[0] and "private" not in keys[1]


def test_password_hasher() -> None:
    hasher = PasswordHasher()
    encoded = hasher.hash("correct horse battery staple")
    assert hasher.verify("correct horse battery staple", encoded)
    assert not hasher.verify("correct horse battery stapl", encoded)
    assert not hasher.needs_rehash(encoded)
    assert PasswordHasher(log_n=16).needs_rehash(encoded)
    assert encoded != hasher.hash("correct horse battery staple")  # salted
    for junk in ("", "scrypt$", "bcrypt$x$y$z", "scrypt$ln=40,r=8,p=1$AA$AA", encoded + "$"):
        assert not hasher.verify("x", junk)
    assert hasher.verify_dummy("anything") is False


def audit_events(tmp_path: Path) -> list[tuple[str, str, str, str | None, dict[str, object]]]:
    """(action, outcome, actor, entity id, detail) of every audit event, oldest first."""

    async def read() -> list[tuple[str, str, str, str | None, dict[str, object]]]:
        store = SqliteStore(tmp_path / "data" / "voicegw.sqlite3")
        await store.open()
        try:
            events = await store.iter_audit(0, 1000)
        finally:
            await store.close()
        return [
            (e.action, e.outcome, e.actor, e.entity_id, dict(e.detail))
            for e in events
            if e.action != "audit.checkpoint"
        ]

    return asyncio.run(read())


def test_every_change_from_the_command_line_is_audited(  # type: ignore[no-untyped-def]
    voicegw, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "root")
    password = "a long enough password"
    assert (
        voicegw("users", "add", "ada", "--role", "admin", "--password-stdin", stdin=password) == 0
    )
    assert (
        voicegw("users", "add", "ada", "--role", "admin", "--password-stdin", stdin=password) == 1
    )
    assert voicegw("users", "disable", "ada") == 0
    assert voicegw("users", "disable", "ada", "--enable") == 0
    assert voicegw("users", "passwd", "ada", "--password-stdin", stdin=password + "!") == 0
    assert voicegw("users", "list") == 0  # reads are not audited
    assert voicegw("apikeys", "create", "--name", "billing", "--role", "operator") == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    key_id, _ = apikeys.parse(token) or ("", "")
    assert voicegw("apikeys", "rotate", key_id) == 0
    new_token = capsys.readouterr().out.strip()
    new_id, _ = apikeys.parse(new_token) or ("", "")
    assert voicegw("apikeys", "revoke", key_id) == 0
    assert voicegw("apikeys", "list") == 0
    assert voicegw("keys", "rotate") == 0

    events = audit_events(tmp_path)
    assert [(action, outcome, entity) for action, outcome, _, entity, _ in events] == [
        ("user.create", "success", "ada"),
        ("user.create", "failure", None),
        ("user.disable", "success", "ada"),
        ("user.disable", "success", "ada"),
        ("user.password", "success", "ada"),
        ("apikey.create", "success", key_id),
        ("apikey.rotate", "success", new_id),
        ("apikey.revoke", "success", key_id),
        ("signing_key.rotate", "success", events[-1][3]),
    ]
    assert {actor for _, _, actor, _, _ in events} == {"cli:root"}
    details = [detail for *_, detail in events]
    assert details[0] == {"role": "admin"}
    assert "exists" in str(details[1]["reason"])
    assert [details[2]["disabled"], details[3]["disabled"]] == [True, False]
    assert details[5] == {"name": "billing", "role": "operator"}
    assert details[6]["replaces"] == key_id
    # Never a password or a key secret in the trail.
    trail = json.dumps(events)
    secrets = [password, token, new_token]
    secrets += [part for t in (token, new_token) for part in (apikeys.parse(t) or ())[1:]]
    for secret in secrets:
        assert secret not in trail
    # The chain the commands extended verifies.
    capsys.readouterr()
    assert voicegw("audit", "verify") == 0
    assert capsys.readouterr().out.startswith("audit trail intact: 9 events")


def test_users_unlock_forgets_every_failed_login_and_is_audited(  # type: ignore[no-untyped-def]
    voicegw, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from security.lockout import LoginGuard

    monkeypatch.setattr("getpass.getuser", lambda: "root")
    password = "a long enough password"
    assert (
        voicegw("users", "add", "ada", "--role", "admin", "--password-stdin", stdin=password) == 0
    )

    async def failures(add_from: tuple[str, ...] = ()) -> tuple[int, bool]:
        store = SqliteStore(tmp_path / "data" / "voicegw.sqlite3")
        await store.open()
        try:
            guard = LoginGuard(store)
            for network in add_from:
                await guard.failed("ada", network)
            return (
                await store.count_login_failures("ada", 0),
                (await guard.check("ada", "198.51.100.7/32")).locked,
            )
        finally:
            await store.close()

    assert asyncio.run(failures(("198.51.100.7/32",) * 5 + ("2001:db8::/64",))) == (6, True)
    capsys.readouterr()
    assert voicegw("users", "unlock", "ada") == 0
    assert capsys.readouterr().out.strip() == "ada unlocked (6 failed logins forgotten)"
    assert asyncio.run(failures()) == (0, False)
    assert voicegw("users", "unlock", "nobody") == 1
    assert "no user 'nobody'" in capsys.readouterr().err
    events = [e for e in audit_events(tmp_path) if e[0] == "user.unlock"]
    assert events == [
        ("user.unlock", "success", "cli:root", "ada", {"failures": 6}),
        ("user.unlock", "failure", "cli:root", None, {"reason": "no user 'nobody'"}),
    ]
