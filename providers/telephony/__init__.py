"""Carrier media-stream codecs (Twilio Media Streams, Telnyx media streaming)."""
