"""Who may do what: the permissions, the roles that hold them (see README "Roles"), and the
``Principal`` a request acts for."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal

from gateway.records.base import Role
from security.sessions import AccessClaims


class Permission(enum.StrEnum):
    CALLS_READ = "calls:read"
    CALLS_CONTROL = "calls:control"  # hang up or transfer a live call
    PROVIDERS_READ = "providers:read"
    AUDIT_READ = "audit:read"
    SUBJECTS_EXPORT = "subjects:export"  # data-subject access requests
    SUBJECTS_ERASE = "subjects:erase"
    SECURITY_REVIEW = "security:review"  # admin only: the security review and key inventory
    AGENTS_READ = "agents:read"  # the agent profiles in force (read-only)
    AGENTS_RELOAD = "agents:reload"  # admin only: read the agents file again
    EVENTS_MANAGE = "events:manage"  # admin only: the call events' deliveries, re-sending
    CALLS_DIAL = "calls:dial"  # place outbound calls (POST /api/v1/calls)


ROLE_PERMISSIONS: Final[dict[Role, frozenset[Permission]]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset(
        {
            Permission.CALLS_READ,
            Permission.CALLS_CONTROL,
            Permission.PROVIDERS_READ,
            Permission.AGENTS_READ,
        }
    ),
    # Data-subject requests (export and erasure) are the auditor's job (issue: "auditor or
    # admin role"); everything else the auditor sees is read-only.
    Role.AUDITOR: frozenset(
        {Permission.AUDIT_READ, Permission.SUBJECTS_EXPORT, Permission.SUBJECTS_ERASE}
    ),
    # A service that places calls: it reads nothing back (toll fraud is the risk it carries).
    Role.DIALER: frozenset({Permission.CALLS_DIAL}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: a user's session or a service's API key."""

    name: str
    role: Role
    via: Literal["session", "api_key"]
    claims: AccessClaims | None = None
    key_id: str | None = None

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]
