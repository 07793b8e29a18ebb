"""Who may sign in and call the API: users, their failed logins, and API keys."""

from __future__ import annotations

from gateway.records.base import ApiKeyRecord, NotFoundError, Role, UserRecord
from gateway.records.sql.queries import Row, SqlQueries
from security.lockout import FailureCounts

_USER_COLUMNS = "user_id, username, role, password_hash, disabled, created_at, password_changed_at"
_KEY_COLUMNS = "key_id, name, role, key_hash, created_at, expires_at, revoked_at, last_used_at"


def _user(row: Row) -> UserRecord:
    return UserRecord(
        user_id=row[0],
        username=row[1],
        role=Role(row[2]),
        password_hash=row[3],
        disabled=bool(row[4]),
        created_at=row[5],
        password_changed_at=row[6],
    )


def _key(row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row[0],
        name=row[1],
        role=Role(row[2]),
        key_hash=row[3],
        created_at=row[4],
        expires_at=row[5],
        revoked_at=row[6],
        last_used_at=row[7],
    )


class AccountQueries(SqlQueries):
    """The ``Store`` methods of users, login failures and API keys."""

    # -- users -----------------------------------------------------------------------------

    async def add_user(self, user: UserRecord) -> None:
        await self._write(
            f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                user.user_id,
                user.username,
                str(user.role),
                user.password_hash,
                user.disabled,
                user.created_at,
                user.password_changed_at,
            ),
        )

    async def get_user(self, username: str) -> UserRecord | None:
        return await self._one(
            f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?", (username,), _user
        )

    async def get_user_by_id(self, user_id: str) -> UserRecord | None:
        return await self._one(
            f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = ?", (user_id,), _user
        )

    async def list_users(self) -> list[UserRecord]:
        return await self._all(f"SELECT {_USER_COLUMNS} FROM users ORDER BY username", (), _user)

    async def update_user(self, user: UserRecord) -> None:
        changed = await self._write(
            "UPDATE users SET username = ?, role = ?, password_hash = ?, disabled = ?, "
            "created_at = ?, password_changed_at = ? WHERE user_id = ?",
            (
                user.username,
                str(user.role),
                user.password_hash,
                user.disabled,
                user.created_at,
                user.password_changed_at,
                user.user_id,
            ),
        )
        if not changed:
            raise NotFoundError(f"no user with id {user.user_id!r}")

    async def delete_user(self, user_id: str) -> bool:
        return await self._write("DELETE FROM users WHERE user_id = ?", (user_id,)) > 0

    # -- login failures --------------------------------------------------------------------

    async def add_login_failure(self, username: str, at: float, network: str = "") -> None:
        await self._write(
            "INSERT INTO login_failures (username, network, at) VALUES (?, ?, ?)",
            (username, network, at),
        )

    async def count_login_failures(self, username: str, since: float) -> int:
        count = await self._one(
            "SELECT count(*) FROM login_failures WHERE username = ? AND at >= ?",
            (username, since),
            lambda row: int(row[0]),
        )
        return count or 0

    async def login_failure_counts(
        self, username: str, network: str, since: float, cap: int
    ) -> FailureCounts:
        counts = await self._one(
            "SELECT coalesce(sum(CASE WHEN network = ? THEN n ELSE 0 END), 0), "
            "coalesce(sum(CASE WHEN n > ? THEN ? ELSE n END), 0), coalesce(max(latest), 0) "
            "FROM (SELECT network, count(*) AS n, max(at) AS latest FROM login_failures "
            "WHERE username = ? AND at >= ? GROUP BY network) AS per_network",
            (network, cap, cap, username, since),
            lambda row: FailureCounts(int(row[0]), int(row[1]), float(row[2])),
        )
        return FailureCounts(0, 0, 0.0) if counts is None else counts

    async def clear_login_failures(self, username: str, network: str | None = None) -> int:
        if network is None:
            return await self._write("DELETE FROM login_failures WHERE username = ?", (username,))
        return await self._write(
            "DELETE FROM login_failures WHERE username = ? AND network = ?", (username, network)
        )

    async def delete_login_failures_before(self, cutoff: float) -> int:
        async with self._transaction(write=True) as tx:
            rows = await tx.fetchall(
                "DELETE FROM login_failures WHERE at < ? RETURNING at", (cutoff,)
            )
        return len(rows)

    # -- API keys --------------------------------------------------------------------------

    async def add_api_key(self, key: ApiKeyRecord) -> None:
        await self._write(
            f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key.key_id,
                key.name,
                str(key.role),
                key.key_hash,
                key.created_at,
                key.expires_at,
                key.revoked_at,
                key.last_used_at,
            ),
        )

    async def get_api_key(self, key_id: str) -> ApiKeyRecord | None:
        return await self._one(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,), _key
        )

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        return await self._all(
            f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, key_id", (), _key
        )

    async def update_api_key(self, key: ApiKeyRecord) -> None:
        changed = await self._write(
            "UPDATE api_keys SET name = ?, role = ?, key_hash = ?, created_at = ?, "
            "expires_at = ?, revoked_at = ?, last_used_at = ? WHERE key_id = ?",
            (
                key.name,
                str(key.role),
                key.key_hash,
                key.created_at,
                key.expires_at,
                key.revoked_at,
                key.last_used_at,
                key.key_id,
            ),
        )
        if not changed:
            raise NotFoundError(f"no API key {key.key_id!r}")

    async def touch_api_key(self, key_id: str, at: float) -> None:
        await self._write("UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", (at, key_id))
