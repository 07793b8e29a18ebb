"""Media: the stream endpoints, the Bridge (inbound, outbound pacing with marks and barge-in,
failover), stream admission, opening agents, audio conversion and framing, fallback tones,
recordings. Imports ``gateway.calls`` (state, registry), ``gateway.http``, ``gateway.lifecycle``
and the lower packages; the endpoints read ``gateway.runtime``."""
