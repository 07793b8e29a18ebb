"""HTTP and WebSocket plumbing: the draining server, the WebSocket protocol tuning, request
limits, error replies and close codes, input checks, client addresses, health and middleware.
May import ``gateway.runtime`` (to read it), ``gateway.services``, the lower packages."""
