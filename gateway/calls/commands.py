"""Commands on a live call from the customer's systems or the console: hang up, transfer.

The Bridge of a call runs on one replica (the registry says which). A command given to that
replica acts on its Bridge at once. Given to another replica, it travels through Redis: each
replica listens on a channel of its own (``<prefix>cmd:<replica>``, a shard channel on Redis
Cluster); the holder acts and pushes the outcome to a reply list the sender waits on
(bounded). Without Redis there is one replica, and it holds every call.

A hang-up whose holder does not answer (it died, or Redis lost the message) is still carried
out: the carrier is asked to hang up over its REST API, which ends the stream wherever it runs.
A transfer needs the holder (it closes the stream after the carrier moved the call): without it
the command fails with ``unreachable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final, Protocol

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from gateway.calls.state import Call, EndReason
from metrics.registry import CALL_COMMANDS
from security.rediskeys import RedisClient

log = logging.getLogger("voicegw.runtime")

REPLY_WAIT_S: Final = 5.0
"""How long a sender waits for the holder's outcome (a transfer waits for the carrier)."""
REPLY_TTL_S: Final = 30
RECONNECT_S: Final = 1.0


class Outcome(enum.StrEnum):
    OK = "ok"
    NOT_LIVE = "not_live"  # no bridge holds the call (it ended, or its stream never opened)
    UNKNOWN_DESTINATION = "unknown_destination"
    DENIED_DESTINATION = "denied_destination"  # the toll-fraud guard refused its number
    FAILED = "failed"  # the carrier refused or failed the transfer
    BUSY = "busy"  # the call is already ending (an end_call or a transfer under way)
    UNREACHABLE = "unreachable"  # the replica holding the call did not answer


class HeldCall(Protocol):
    """A live Bridge as commands see it (``gateway.media.bridge.Bridge``)."""

    @property
    def call(self) -> Call: ...

    def end(self, reason: EndReason, *, transfer_to: str | None = None) -> None: ...

    async def transfer(self, destination: str) -> str:
        """Transfer at once to the profile's ``destination`` key; an :class:`Outcome` value."""
        ...


class Bridges(Protocol):
    def __iter__(self) -> Iterator[Any]: ...


class HangUp(Protocol):
    def hang_up(self, call: Call, account_id: str | None) -> None: ...


class CallCommands:
    """Hang-up and transfer of live calls, wherever their Bridge runs. ``redis`` is a client
    of its own (no socket timeout: it blocks on the channel and on replies), or None."""

    def __init__(
        self,
        *,
        bridges: Bridges,
        control: HangUp,
        replica_id: str,
        redis: RedisClient | None = None,
        prefix: str = "voicegw:",
    ) -> None:
        self.bridges = bridges
        self.control = control
        self.replica_id = replica_id
        self.redis = redis
        self.prefix = prefix
        self._answering: set[asyncio.Task[None]] = set()

    def _channel(self, replica: str) -> str:
        return f"{self.prefix}cmd:{replica}"

    # -- giving a command ---------------------------------------------------------------------

    async def hang_up(self, call: Call) -> Outcome:
        """End ``call`` (outcome ``operator_hangup``): its Bridge closes the stream and hangs up
        the line. ``NOT_LIVE`` when no Bridge holds it and the call has ended."""
        outcome = await self._give(call, {"cmd": "hangup"})
        if outcome is Outcome.UNREACHABLE or (outcome is Outcome.NOT_LIVE and call.active):
            # Nobody holds the stream (its replica died, or it never opened): the carrier
            # ends the call itself, which closes any stream it still has.
            self.control.hang_up(call, call.account_id)
            outcome = Outcome.OK
        CALL_COMMANDS.labels("hangup", outcome.value).inc()
        return outcome

    async def transfer(self, call: Call, destination: str) -> Outcome:
        """Move ``call`` to the profile's ``destination`` key at once."""
        outcome = await self._give(call, {"cmd": "transfer", "destination": destination})
        CALL_COMMANDS.labels("transfer", outcome.value).inc()
        return outcome

    async def _give(self, call: Call, command: dict[str, str]) -> Outcome:
        if call.replica == self.replica_id or self.redis is None:
            return await self._act(call.call_id, command)
        request = secrets.token_urlsafe(12)
        message = orjson.dumps({**command, "call_id": call.call_id, "reply": request})
        reply_key = f"{self.prefix}cmdreply:{request}"
        try:
            channel = self._channel(call.replica)
            if isinstance(self.redis, RedisCluster):
                listeners = await self.redis.spublish(channel, message)
            else:
                listeners = await self.redis.publish(channel, message)
            if not listeners:
                return Outcome.UNREACHABLE
            popped = await self.redis.blpop([reply_key], timeout=REPLY_WAIT_S)
        except (RedisError, RedisClusterException, OSError) as exc:
            log.warning("call command not delivered", extra={"error": type(exc).__name__})
            return Outcome.UNREACHABLE
        if popped is None:
            return Outcome.UNREACHABLE
        try:
            return Outcome(popped[1].decode() if isinstance(popped[1], bytes) else popped[1])
        except ValueError:
            return Outcome.UNREACHABLE

    # -- carrying one out ---------------------------------------------------------------------

    async def _act(self, call_id: str, command: dict[str, str]) -> Outcome:
        held: HeldCall | None = next((b for b in self.bridges if b.call.call_id == call_id), None)
        if held is None:
            return Outcome.NOT_LIVE
        match command.get("cmd"):
            case "hangup":
                held.end(EndReason.OPERATOR_HANGUP)
                return Outcome.OK
            case "transfer":
                return Outcome(await held.transfer(command.get("destination", "")))
            case _:
                return Outcome.FAILED

    async def run(self) -> None:
        """Carry out the commands other replicas send this one, until cancelled. Reconnects
        after a Redis failure."""
        if self.redis is None:
            return
        while True:
            try:
                async for data in self._messages(self.redis):
                    task = asyncio.create_task(self._answer(data))
                    self._answering.add(task)
                    task.add_done_callback(self._answering.discard)
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("call command channel lost", extra={"error": type(exc).__name__})
                await asyncio.sleep(RECONNECT_S)

    async def _messages(self, redis: RedisClient) -> AsyncIterator[object]:
        """The messages sent to this replica's channel, until the subscription fails. On a
        cluster the channel is a shard channel (``SSUBSCRIBE``), held by the node of its slot:
        a classic ``PUBLISH`` there counts only the receivers on the node it reached."""
        channel = self._channel(self.replica_id)
        if isinstance(redis, RedisCluster):
            async with redis.pubsub() as sharded:
                await sharded.ssubscribe(channel)
                while True:
                    message = await sharded.get_sharded_message(
                        ignore_subscribe_messages=True, timeout=None
                    )
                    if message is not None and message.get("type") == "smessage":
                        yield message.get("data")
        else:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        yield message.get("data")

    async def _answer(self, data: object) -> None:
        try:
            raw = data if isinstance(data, bytes | str) else b""
            message = orjson.loads(raw)
            call_id, reply = message["call_id"], message["reply"]
            if not isinstance(call_id, str) or not isinstance(reply, str) or len(reply) > 64:
                return
            command = {k: v for k, v in message.items() if isinstance(v, str)}
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        outcome = await self._act(call_id, command)
        key = f"{self.prefix}cmdreply:{reply}"
        if self.redis is None:
            return
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.rpush(key, outcome.value)
                pipe.expire(key, REPLY_TTL_S)
                await pipe.execute()
