"""Thin asyncio sessions around the AI-provider codecs, and the factory that picks one.

A session owns one WebSocket (a :mod:`providers.ai.transport` connection: picows or
``websockets``, as ``config.ws_client`` says) and one codec. Call order:
``connect()`` once, then ``send()`` / ``recv()`` from any tasks (one receiver), then
``close()`` (idempotent). ``recv()`` yields :class:`AgentReady` first, then the provider's
events; it raises :class:`SessionClosed` when the socket ends, with ``abnormal`` set when the
peer vanished, closed with an error code, or stopped reading.

Every wait is bounded: the whole setup by ``connect_timeout_s``, each socket send by
``send_timeout_s`` (a peer that stops reading fails the session instead of hanging it), close
by ``close_timeout_s``. Log lines carry the provider name and reasons, never audio, transcripts,
URLs with keys, or headers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
from typing import Final, Protocol, assert_never

from providers.ai import deepgram_agent, gemini_live, openai_realtime, transport
from providers.ai.config import AgentConfig, Endpoint, Provider
from providers.ai.deepgram_agent import DeepgramAgentCodec
from providers.ai.echo import EchoSession
from providers.ai.gemini_live import GeminiLiveCodec
from providers.ai.openai_realtime import OpenAIRealtimeCodec
from providers.ai.transport import Closed, Connection
from providers.codec import AgentCodec, Frame
from providers.events import (
    AgentEvent,
    AgentReady,
    AudioChunk,
    AudioFormat,
    Error,
    GoAway,
    KeepAlive,
    ToAgent,
)
from providers.exceptions import ConnectError, ProtocolError, SessionClosed, SessionError

logger = logging.getLogger("voicegw.providers")

_MAX_BUFFERED_CONTROL: Final = 64


class AgentSession(Protocol):
    """What the bridge talks to: one conversation with one AI provider."""

    @property
    def provider(self) -> str: ...

    @property
    def input_format(self) -> AudioFormat: ...

    @property
    def output_format(self) -> AudioFormat: ...

    async def connect(self) -> None:
        """Open and set up the session. Raises :class:`ConnectError`."""

    async def send(self, event: ToAgent) -> None:
        """Send one event. Raises :class:`SessionClosed`."""

    async def recv(self) -> AgentEvent:
        """The next event. Raises :class:`SessionClosed` when the session has ended."""

    async def close(self) -> None:
        """Close the session; idempotent and bounded in time."""


class State(enum.Enum):
    IDLE = enum.auto()
    CONNECTING = enum.auto()
    OPEN = enum.auto()
    CLOSED = enum.auto()


class SessionCodec(AgentCodec, Protocol):
    """An agent codec with frames to send once the provider has acknowledged the setup."""

    def after_ready(self) -> list[Frame]:
        """Frames to send right after :class:`AgentReady` (the greeting); may be empty."""
        ...


class WebSocketAgentSession:
    """An :class:`AgentSession` speaking ``codec``'s protocol over one WebSocket."""

    def __init__(self, codec: SessionCodec, config: AgentConfig, endpoint: Endpoint) -> None:
        self.codec = codec
        self.config = config
        self.endpoint = endpoint
        self.state = State.IDLE
        self.protocol_errors = 0
        """Frames the codec could not parse (dropped, counted)."""
        self._ws: Connection | None = None
        self._pending: collections.deque[AgentEvent] = collections.deque()
        self._closing = False
        self._failure: str | None = None
        self._last_send = 0.0
        self._keepalive: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        # Start times (loop time) of the sends in flight. One watchdog per session checks
        # them: a timer per send would cost more than the send itself.
        self._sends: dict[int, float] = {}
        self._send_seq = 0

    @property
    def provider(self) -> str:
        return self.codec.provider

    @property
    def input_format(self) -> AudioFormat:
        return self.codec.input_format

    @property
    def output_format(self) -> AudioFormat:
        return self.codec.output_format

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        if self.state is not State.IDLE:
            raise RuntimeError("connect() may be called once")
        self.state = State.CONNECTING
        try:
            self._ws, early = await self._open()
        except BaseException:
            self.state = State.CLOSED
            raise
        if self._closing:  # close() ran while we were connecting
            self._abort(self._ws)
            raise ConnectError(f"{self.provider}: closed while connecting")
        self.state = State.OPEN
        self._pending.append(AgentReady())
        self._pending.extend(early)
        self._last_send = asyncio.get_running_loop().time()
        if self.config.idle_keepalive_s:
            self._keepalive = asyncio.create_task(self._keep_alive(self.config.idle_keepalive_s))
        self._watchdog = asyncio.create_task(self._watch_sends())
        logger.info("%s session ready", self.provider)

    async def _open(self) -> tuple[Connection, list[AgentEvent]]:
        """Open a socket, send the codec's setup, wait for its acknowledgement and send what
        the codec has for then (``after_ready``).

        Returns the socket and the events received before the acknowledgement (which is
        consumed). Raises :class:`ConnectError`; never leaves a socket open on failure.
        """
        ws: Connection | None = None
        config = self.config
        timeout = config.connect_timeout_s
        options = transport.Options(
            open_timeout_s=timeout,
            ping_interval_s=config.ping_interval_s,
            ping_timeout_s=config.ping_timeout_s,
            close_timeout_s=config.close_timeout_s,
            max_message_bytes=config.max_message_bytes,
        )
        try:
            async with asyncio.timeout(timeout):
                ws = await transport.connect(
                    config.ws_client, self.endpoint.url, self.endpoint.headers, options
                )
                for frame in self.codec.start():
                    await ws.send(frame)
                early: list[AgentEvent] = []
                while True:
                    events = self._feed(await ws.recv())
                    ready = False
                    for event in events:
                        match event:
                            case AgentReady():
                                ready = True
                            case Error(fatal=True):
                                raise ConnectError(
                                    f"{self.provider} refused the setup: {event.code}"
                                )
                            case _:
                                early.append(event)
                    if ready:
                        for frame in self.codec.after_ready():
                            await ws.send(frame)
                        return ws, early
        except TimeoutError:
            self._abort(ws)
            raise ConnectError(f"{self.provider}: not ready within {timeout:g} s") from None
        except Closed as exc:
            self._abort(ws)
            code = "none" if exc.code is None else exc.code
            raise ConnectError(f"{self.provider}: closed during setup (code {code})") from None
        except ConnectError as exc:
            self._abort(ws)
            if ws is None:  # the transport's: name the provider
                raise ConnectError(f"{self.provider}: {exc}") from None
            raise
        except BaseException:
            self._abort(ws)
            raise

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.state = State.CLOSED
        for task in (self._keepalive, self._watchdog):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._ws is not None:
            await self._close_ws(self._ws)
        logger.info("%s session closed", self.provider)

    async def _close_ws(self, ws: Connection) -> None:
        await ws.close()  # bounded by close_timeout_s

    @staticmethod
    def _abort(ws: Connection | None) -> None:
        if ws is not None:
            ws.abort()

    # -- data ------------------------------------------------------------------------------

    async def send(self, event: ToAgent) -> None:
        ws = self._open_ws()
        for frame in self.codec.encode(event):
            await self._send_frame(ws, frame)

    async def _send_frame(self, ws: Connection, frame: Frame) -> None:
        """Send one frame; ``_watch_sends`` aborts the socket if it takes too long."""
        now = asyncio.get_running_loop().time()
        self._send_seq = seq = self._send_seq + 1
        self._sends[seq] = now
        try:
            await ws.send(frame)
        except Closed as exc:
            raise self._closed(exc) from None
        finally:
            del self._sends[seq]
        self._last_send = now

    async def _watch_sends(self) -> None:
        """Abort the session once one send has waited ``send_timeout_s``: the peer stopped
        reading, and its state is unknown from then on. Checks a few times per timeout."""
        loop = asyncio.get_running_loop()
        timeout = self.config.send_timeout_s
        while True:
            await asyncio.sleep(timeout / 4)
            if self._sends and loop.time() - min(self._sends.values()) > timeout:
                self._failure = "send timed out"
                logger.warning("%s send timed out; aborting the session", self.provider)
                self._abort(self._ws)  # the current socket (Gemini may have resumed on a new one)
                return

    async def recv(self) -> AgentEvent:
        while not self._pending:
            ws = self._open_ws()
            try:
                frame = await ws.recv()
            except Closed as exc:
                raise self._closed(exc) from None
            self._pending.extend(self._feed(frame))
        return self._pending.popleft()

    def _feed(self, frame: Frame) -> list[AgentEvent]:
        try:
            return self.codec.feed(frame)
        except ProtocolError as exc:
            self.protocol_errors += 1
            logger.warning("%s sent an unparsable frame: %s", self.provider, exc.reason)
            return []

    def _open_ws(self) -> Connection:
        if self._closing:
            raise SessionClosed("closed", abnormal=False)
        if self._failure is not None:
            raise SessionClosed(self._failure, abnormal=True)
        if self._ws is None or self.state is not State.OPEN:
            raise RuntimeError("session is not connected")
        return self._ws

    def _closed(self, exc: Closed) -> SessionClosed:
        if self._closing:
            return SessionClosed("closed", abnormal=False)
        if self._failure is not None:
            return SessionClosed(self._failure, abnormal=True)
        log = logger.warning if exc.abnormal else logger.info
        log("%s closed the session (code %s)", self.provider, exc.code)
        return SessionClosed(exc.reason, abnormal=exc.abnormal)

    async def _keep_alive(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            idle = loop.time() - self._last_send
            if idle >= interval:
                try:
                    await self.send(KeepAlive())
                except (SessionError, RuntimeError):
                    return
                idle = 0.0
            await asyncio.sleep(interval - idle)


class GeminiLiveSession(WebSocketAgentSession):
    """A Gemini Live session that survives ``goAway``.

    On ``goAway`` with a resumption handle known, it opens a new connection with that handle,
    switches over and closes the old one; ``recv`` callers see a short gap, nothing else.
    Meanwhile sent audio is buffered (at most ``config.resume_buffer_ms``, oldest dropped) and
    flushed, in order, to the new connection. Without a handle, ``GoAway`` is passed on.
    """

    codec: GeminiLiveCodec

    def __init__(self, codec: GeminiLiveCodec, config: AgentConfig, endpoint: Endpoint) -> None:
        super().__init__(codec, config, endpoint)
        self.resumptions = 0
        self._resuming = False
        self._buffer: collections.deque[ToAgent] = collections.deque()
        self._buffered_ms = 0.0
        self._closers: set[asyncio.Task[None]] = set()

    async def send(self, event: ToAgent) -> None:
        if self._resuming:
            self._hold(event)
            return
        ws = self._open_ws()
        try:
            await super().send(event)
        except SessionClosed:
            if ws is self._ws:
                raise
            # The old connection went away under a send that raced a switch-over: dropped.

    def _hold(self, event: ToAgent) -> None:
        if isinstance(event, AudioChunk):
            self._buffer.append(event)
            self._buffered_ms += event.duration_ms
            while self._buffered_ms > self.config.resume_buffer_ms:
                dropped = next((e for e in self._buffer if isinstance(e, AudioChunk)), None)
                if dropped is None:
                    break
                self._buffer.remove(dropped)
                self._buffered_ms -= dropped.duration_ms
        elif len(self._buffer) < _MAX_BUFFERED_CONTROL:
            self._buffer.append(event)

    async def recv(self) -> AgentEvent:
        while True:
            event = await super().recv()
            if isinstance(event, GoAway) and self.codec.resume_handle:
                await self._resume(event)
                continue
            return event

    async def _resume(self, go_away: GoAway) -> None:
        old = self._open_ws()
        logger.info("gemini goAway (time left %s ms): resuming", go_away.time_left_ms)
        self._resuming = True
        try:
            try:
                new, early = await self._open()
            except ConnectError as exc:
                logger.warning("gemini resume failed: %s", exc)
                self._failure = "resume failed"
                self._abort(old)
                raise SessionClosed("resume failed", abnormal=True) from None
            self._ws = new
            self.resumptions += 1
            closer = asyncio.create_task(self._close_ws(old))
            self._closers.add(closer)
            closer.add_done_callback(self._closers.discard)
            self._pending.extend(early)
            while self._buffer:
                event = self._buffer.popleft()
                if isinstance(event, AudioChunk):
                    self._buffered_ms -= event.duration_ms
                for frame in self.codec.encode(event):
                    await self._send_frame(new, frame)
        finally:
            self._resuming = False
            self._buffered_ms = max(0.0, self._buffered_ms)

    async def close(self) -> None:
        await super().close()
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)


def open_session(config: AgentConfig) -> AgentSession:
    """A session for ``config.provider``, not connected yet."""
    match config.provider:
        case Provider.OPENAI:
            return WebSocketAgentSession(
                OpenAIRealtimeCodec.from_config(config), config, openai_realtime.endpoint(config)
            )
        case Provider.DEEPGRAM:
            return WebSocketAgentSession(
                DeepgramAgentCodec.from_config(config), config, deepgram_agent.endpoint(config)
            )
        case Provider.GEMINI:
            return GeminiLiveSession(
                GeminiLiveCodec.from_config(config), config, gemini_live.endpoint(config)
            )
        case Provider.ECHO:
            return EchoSession(config)
        case _:
            assert_never(config.provider)
