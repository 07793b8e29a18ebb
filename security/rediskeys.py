"""How the Redis backends address Redis: the client type they take, and their key names.

``RedisClient`` is one Redis server (standalone, or the primary a Sentinel names) or a Redis
Cluster; every backend takes either. On a cluster each key lives in one of 16384 hash slots,
and a script or a ``MULTI`` transaction may only touch keys of one slot. Redis hashes only a
key's *hash tag* when it has one (the text between its first ``{`` and the next ``}``), so the
keys one script or transaction touches are named with ``tagged`` and one tag:

* a rate-limit scope's log and counter, the replay keys of the deliveries admitted on that
  scope and the scope's duplicates' limit: the tag of the scope's ``namespace``
  (``slot_tag``), since admission runs one script over all of them;
* a refresh-token family's hash and used-token set: the family id;
* a breaker's state hash and half-open trial set: the breaker's name;
* the call registry's keys: ``calls`` (its scripts read and index calls of any replica).

Keys a script touches alone (stream tokens, revocations, command replies) need no tag. A
pipeline without a transaction may span slots: the cluster client splits it per node.
"""

from __future__ import annotations

import functools
import hashlib
from typing import TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

RedisClient: TypeAlias = Redis | RedisCluster
"""A client of one Redis server or of a Redis Cluster."""


def namespace(name: str) -> str:
    """The text of ``name`` before its first NUL (all of it when it has none): names in one
    namespace share a hash slot (``"twilio"`` and a Twilio delivery ``"twilio\\x00..."``)."""
    return name.partition("\x00")[0]


@functools.lru_cache(maxsize=1024)
def slot_tag(name: str) -> str:
    """The hash tag of ``name``'s namespace: 32 hex digits of its SHA-256, so the tag shows
    nothing of the name and any text (braces included) can name a slot."""
    return hashlib.sha256(namespace(name).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def tagged(head: str, tag: str, *tail: str) -> str:
    """``<head>{<tag>}[:<tail>...]``: keys named with one ``tag`` share one hash slot.

    Raises ``ValueError`` when ``tag`` is empty or ``head`` or ``tag`` holds a brace (Redis
    would hash another part of the key)."""
    if not tag or "{" in head or "{" in tag or "}" in tag:
        raise ValueError("a hash tag is non-empty text without braces")
    return ":".join((f"{head}{{{tag}}}", *tail))
