"""Which media streams may be bridged: the WebSocket upgrade (allowlist; for Twilio, the
signature over its per-call URL), then the stream's ``start`` and the stream token it carries,
spent once for the call it was minted for.
"""

from __future__ import annotations

from redis.exceptions import RedisError
from starlette.requests import HTTPConnection

from gateway.calls.registry import CallRegistry
from gateway.calls.state import Call, CallError, CallState
from gateway.http.clients import ClientAddresses
from gateway.http.errors import CloseCode, StreamRefused
from providers.events import StreamStarted
from security.allowlist import Allowlist
from security.exceptions import Layer, Rejection, StateUnavailable
from security.streamtokens import StreamTokens
from security.webhooks import WebhookPipeline


class StreamAdmission:
    """Admits media streams of the carriers in ``allowlists`` (the enabled ones), as the
    gateway is reached at ``public_ws_url``."""

    def __init__(
        self,
        *,
        public_ws_url: str,
        allowlists: dict[str, Allowlist],
        pipeline: WebhookPipeline,
        clients: ClientAddresses,
        registry: CallRegistry,
        stream_tokens: StreamTokens,
    ) -> None:
        self.public_ws_url = public_ws_url
        self.allowlists = allowlists
        self.pipeline = pipeline
        self.clients = clients
        self.registry = registry
        self.stream_tokens = stream_tokens

    def check_upgrade(self, carrier: str, conn: HTTPConnection) -> None:
        """Allowlist, and for Twilio the signature of the upgrade request over its per-call
        URL (``/media/twilio/{call}``: a path without a call is refused). Raises Rejection."""
        allowlist = self.allowlists.get(carrier)
        if allowlist is None:
            raise Rejection(Layer.REQUEST, "carrier not enabled", 404)
        if carrier == "twilio":
            if not conn.path_params.get("call"):
                raise Rejection(Layer.REQUEST, "no call in the stream path", 404)
            url = self.public_ws_url + conn.url.path
            if conn.url.query:
                url += "?" + conn.url.query
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in conn.headers.raw]
            peer = conn.client.host if conn.client else ""
            self.pipeline.check_twilio_media_upgrade(url, headers, peer)
        else:
            allowlist.check(self.clients.address(conn))

    async def claim(
        self, carrier: str, started: StreamStarted, path_call: str | None = None
    ) -> Call:
        """Consume the stream token bound to this call and mark the call streaming.

        ``path_call``: the call id the stream URL names (Twilio's, whose upgrade signature
        covers it); a stream whose ``start`` is for another call is refused before its token
        is spent. Raises StreamRefused; while shared state is down, with TRY_AGAIN_LATER
        (tokens fail closed)."""
        token = started.auth_token or ""
        try:
            call = None
            if path_call is not None:
                call = await self.registry.by_carrier_id(carrier, started.call_id)
                if call is None or call.call_id != path_call:
                    raise StreamRefused(CloseCode.POLICY_VIOLATION, "stream path of another call")
            if not await self.stream_tokens.consume(token, f"{carrier}:{started.call_id}"):
                raise StreamRefused(CloseCode.POLICY_VIOLATION, "invalid stream token")
            if call is None:
                call = await self.registry.by_carrier_id(carrier, started.call_id)
            if call is None or call.state is not CallState.CONNECTING:
                raise StreamRefused(CloseCode.POLICY_VIOLATION, "call not awaiting a stream")
            return await self.registry.transition(call.call_id, CallState.STREAMING)
        except CallError:
            # Ended meanwhile (a hang-up, or its stream was given up on): nothing to stream.
            raise StreamRefused(CloseCode.POLICY_VIOLATION, "call not awaiting a stream") from None
        except (StateUnavailable, RedisError, OSError, TimeoutError):
            raise StreamRefused(CloseCode.TRY_AGAIN_LATER, "shared state unavailable") from None
