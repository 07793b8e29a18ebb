"""The security self-review: checks over the settings and live facts of a gateway."""
