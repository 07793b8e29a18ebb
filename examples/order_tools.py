"""Example Python tools for ``examples/agents.toml`` (``handler = "order_tools:lookup_order"``).

A handler is ``async def name(arguments, context) -> JSON-able``: ``arguments`` is the model's
JSON object, ``context`` a ``gateway.agents.ToolContext`` (call_id, agent, carrier, and caller
when the tool sets ``send_caller``). Whatever it returns is sent to the model as JSON.
"""

from __future__ import annotations

import hashlib
from typing import Any

STATUSES = ("being packed", "shipped", "out for delivery", "delivered")


async def lookup_order(arguments: dict[str, Any], context: Any) -> dict[str, Any]:
    """Deterministic fake data: the same order id always gives the same answer."""
    order_id = str(arguments.get("order_id", "")).strip().upper()
    if not order_id:
        return {"found": False, "reason": "no order number given"}
    digest = hashlib.sha256(order_id.encode()).digest()
    return {
        "found": True,
        "order_id": order_id,
        "status": STATUSES[digest[0] % len(STATUSES)],
        "items": 1 + digest[1] % 4,
    }
