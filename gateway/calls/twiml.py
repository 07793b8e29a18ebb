"""The TwiML the gateway answers Twilio with: ``<Connect><Stream>`` to a call's own media
stream URL (an inbound call's voice webhook, an outbound call's ``Twiml``) and ``<Hangup/>``."""

from __future__ import annotations

from typing import Final

__all__ = ["HANGUP_TWIML", "connect_twiml", "twilio_stream_url"]

# TwiML exactly as the twilio package renders it (a test keeps them equal), without building
# its element tree for every call.
_XML_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>'
HANGUP_TWIML: Final = _XML_DECLARATION + "<Response><Hangup /></Response>"
_ATTRIBUTE: Final = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\r": "&#13;",
        "\n": "&#10;",
        "\t": "&#09;",
    }
)


def twilio_stream_url(public_ws_url: str, call_id: str) -> str:
    """The media stream URL of one call. The call id is a path segment (Twilio allows no query
    on a stream URL), so the signature of Twilio's WebSocket upgrade binds to this one call."""
    return f"{public_ws_url}/media/twilio/{call_id}"


def connect_twiml(stream_url: str, token: str) -> str:
    """``<Connect><Stream url=...>`` with the stream token as its one ``<Parameter>``."""
    return (
        f'{_XML_DECLARATION}<Response><Connect><Stream url="{stream_url.translate(_ATTRIBUTE)}">'
        f'<Parameter name="token" value="{token.translate(_ATTRIBUTE)}" /></Stream></Connect>'
        "</Response>"
    )
