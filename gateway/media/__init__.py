"""Media: the stream endpoints, the Bridge (inbound, outbound pacing with marks and barge-in,
failover), stream admission, opening agents, audio conversion and framing, fallback tones,
recordings. May import ``gateway.calls`` (state and registry), ``gateway.http``, the lower
packages."""
