"""A resolver for the egress guard's seam that answers from a table the test edits: a DNS
server under the test's control (``/etc/hosts`` is not writable, and tests stay off the
network)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from security.egress import IPAddress


class TableResolver:
    """``TableResolver(hooks_example_test="127.0.0.1,10.0.0.1")``: underscores in the keyword
    stand for dots. ``answers`` may be edited between requests; ``asked`` lists the names
    resolved, in order."""

    def __init__(self, **answers: str) -> None:
        self.answers = {name.replace("_", "."): value for name, value in answers.items()}
        self.asked: list[str] = []

    async def resolve(self, host: str, port: int) -> Sequence[IPAddress]:
        self.asked.append(host)
        if host not in self.answers:
            raise OSError(f"{host}: no such name")
        return [ipaddress.ip_address(a) for a in self.answers[host].split(",")]
