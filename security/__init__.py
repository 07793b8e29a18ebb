"""voicegw security package: the webhook front door and the checks behind it.

``webhooks`` runs the layers (``allowlist``, freshness, ``signatures``, ``replay``,
``ratelimit``) on each carrier request; ``streamtokens`` admits media streams; ``redaction``
keeps personal data out of logs. Every exception raised on purpose derives from
``exceptions.SecurityError``. Nothing here imports the web framework or ``gateway``.
"""
