"""The tool runner: one tool call from the model, run at the customer's endpoint (a signed
``POST``) or by an in-process Python handler, turned into the JSON text the model reads next.

:meth:`ToolRunner.run` never raises for a failure of the tool: the model gets a short error
output (``{"error": "timeout"}``) and the call goes on. Outcomes:

``ok``            2xx with a JSON body (HTTP), a JSON-able result (Python)
``bad_arguments`` the model's arguments are not a JSON object: nothing was sent
``timeout``       no complete answer within the tool's ``timeout_s``
``http_error``    a non-2xx status (redirects are not followed), or the request failed
``too_large``     the answer passed 16 KiB (reading stopped there)
``bad_answer``    a 2xx that is not JSON, a result ``json.dumps`` refuses
``breaker_open``  the endpoint's breaker refuses calls: nothing was sent
``refused``       the egress policy refuses the endpoint (http in production, a host that is or
                  resolves to a loopback, private, link-local... address): nothing was sent
``error``         a Python handler raised

Breakers count what says the endpoint is down: timeouts, transport errors (connect, reset) and
5xx statuses. A 4xx, a redirect, an oversize or non-JSON answer is the endpoint answering: the
trial succeeds; a refusal by the egress policy says nothing of the endpoint's health and leaves
the breaker as it was. Arguments and outputs are never logged.

The output is data for the model, never instructions to the session: it is the endpoint's JSON
(or the handler's result) re-encoded compactly, every string stripped of control characters
(``\n`` and ``\t`` stay), at most 16 KiB; the provider codecs send it as a function output
item only.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import httpx

from gateway.agents.http_tools import (
    MAX_ANSWER_BYTES,
    Signer,
    TooLarge,
    breaker_name,
    parse_tool_secrets,
    read_capped,
    user_agent,
)
from gateway.agents.profiles import AgentProfile, ToolContext, ToolSpec
from metrics.registry import TOOL_CALL_SECONDS, TOOL_CALLS
from providers.breakers import BreakerOpen, BreakerRegistry
from providers.events import ToolCall
from security.egress import EgressPolicy, EgressRefused, Reason, host_of
from security.egress_http import egress_client, record_refusal
from security.secret import Secret

__all__ = ["Outcome", "ToolContext", "ToolOutcome", "ToolRunner", "parse_tool_secrets"]

log = logging.getLogger("voicegw.agents.tools")


class Outcome(enum.StrEnum):
    OK = "ok"
    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"
    TOO_LARGE = "too_large"
    BAD_ANSWER = "bad_answer"
    BREAKER_OPEN = "breaker_open"
    BAD_ARGUMENTS = "bad_arguments"
    REFUSED = "refused"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What the model reads (``output``, JSON text) and what the metrics and the audit trail
    record (``outcome``, one of :class:`Outcome`; ``seconds``)."""

    output: str
    outcome: str
    seconds: float


def _compact(value: Any) -> str:
    """``value`` as compact JSON text; ``TypeError``/``ValueError`` when it is not JSON-able."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# C0 and C1 controls and DEL, except tab and newline.
_CONTROLS: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def as_data(value: Any) -> Any:
    """``value`` (parsed JSON, or a handler's result) with control characters removed from
    every string, keys included; anything else unchanged."""
    if isinstance(value, str):
        return _CONTROLS.sub("", value)
    if isinstance(value, dict):
        return {as_data(k) if isinstance(k, str) else k: as_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_data(item) for item in value]
    return value


class _Failed(Exception):
    def __init__(self, outcome: Outcome, **detail: Any) -> None:
        self.outcome = outcome
        self.detail = detail


class ToolRunner:
    """Runs tool calls. ``secrets`` sign HTTP requests (may be empty when no tool has a URL:
    an HTTP tool then fails with ``error``); ``breakers`` is the runner's own registry (one
    breaker per endpoint); ``http`` is a client to use (otherwise the runner makes one guarded
    by ``egress``, by default the policy of the mode, and closes it in :meth:`aclose`)."""

    def __init__(
        self,
        *,
        secrets: Sequence[Secret],
        breakers: BreakerRegistry,
        production: bool,
        egress: EgressPolicy | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._signer = Signer(secrets) if secrets else None
        self._breakers = breakers
        self._production = production
        self._own_http = http is None
        self._http = http or egress_client(
            egress or EgressPolicy.for_mode(production), target="tool"
        )
        self._user_agent = user_agent()

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def run(
        self, profile: AgentProfile, spec: ToolSpec, call: ToolCall, context: ToolContext
    ) -> ToolOutcome:
        """Run ``call`` of ``spec`` (a tool of ``profile``) and say what the model reads."""
        started = time.monotonic()
        if not spec.send_caller:
            context = replace(context, caller=None)
        try:
            arguments = _arguments(call.arguments)
            if spec.url is not None:
                output = await self._post(spec, spec.url, arguments, context)
            else:
                output = await self._call(spec, arguments, context)
            outcome = ToolOutcome(output, Outcome.OK, time.monotonic() - started)
        except _Failed as failed:
            error = _compact({"error": str(failed.outcome), **failed.detail})
            outcome = ToolOutcome(error, failed.outcome, time.monotonic() - started)
        TOOL_CALLS.labels(profile.name, spec.name, outcome.outcome).inc()
        TOOL_CALL_SECONDS.labels(profile.name, spec.name).observe(outcome.seconds)
        log.info(
            "tool call %s of agent %s: %s in %.3f s",
            spec.name,
            profile.name,
            outcome.outcome,
            outcome.seconds,
        )
        return outcome

    async def _post(
        self, spec: ToolSpec, url: str, arguments: dict[str, Any], context: ToolContext
    ) -> str:
        if self._signer is None:
            log.error("tool %s has a URL but VOICEGW_TOOLS_SECRET is not set", spec.name)
            raise _Failed(Outcome.ERROR)
        if self._production and not url.startswith("https://"):
            # The loader refuses it too, and the egress client: defence in depth.
            record_refusal("tool", host_of(url), Reason.CLEARTEXT)
            raise _Failed(Outcome.REFUSED)
        breaker = self._breakers.get(breaker_name(url))
        try:
            trial = await breaker.acquire()
        except BreakerOpen:
            raise _Failed(Outcome.BREAKER_OPEN) from None
        message: dict[str, Any] = {
            "type": "tool.call",
            "id": "",
            "call_id": context.call_id,
            "agent": context.agent,
            "tool": spec.name,
            "arguments": arguments,
        }
        if context.caller is not None:
            message["caller"] = context.caller
        try:
            async with asyncio.timeout(spec.timeout_s):
                status, body = await self._exchange(url, message)
        except TimeoutError:
            await trial.fail("TimeoutError")
            raise _Failed(Outcome.TIMEOUT) from None
        except TooLarge:
            await trial.succeed()
            raise _Failed(Outcome.TOO_LARGE) from None
        except EgressRefused:  # counted and logged by the guard; nothing was sent
            await trial.release()
            raise _Failed(Outcome.REFUSED) from None
        except httpx.HTTPError as exc:
            await trial.fail(type(exc).__name__)
            raise _Failed(Outcome.HTTP_ERROR) from None
        except BaseException:  # cancelled with the call: says nothing about the endpoint
            await trial.release()
            raise
        if status >= 500:
            await trial.fail(f"HTTP{status}")
        else:
            await trial.succeed()
        if not 200 <= status < 300:
            raise _Failed(Outcome.HTTP_ERROR, status=status)
        try:
            output = _compact(as_data(json.loads(body)))
        except ValueError:  # not UTF-8, not JSON, NaN
            raise _Failed(Outcome.BAD_ANSWER) from None
        if len(output.encode()) > MAX_ANSWER_BYTES:  # escapes can lengthen it
            raise _Failed(Outcome.TOO_LARGE)
        return output

    async def _exchange(self, url: str, message: dict[str, Any]) -> tuple[int, bytes]:
        assert self._signer is not None  # noqa: S101 (checked by the caller)
        # The message id is the webhook-id: one id for the body and the signature.
        message["id"] = msg_id = self._signer.message_id()
        body = _compact(message).encode()
        headers = self._signer.headers(msg_id, body)
        headers.update(
            {
                "content-type": "application/json",
                "user-agent": self._user_agent,
                "accept": "application/json",
                # Raw bytes only: a compressed answer could expand past the cap in memory.
                "accept-encoding": "identity",
            }
        )
        request = self._http.build_request("POST", url, content=body, headers=headers)
        response = await self._http.send(request, stream=True, follow_redirects=False)
        try:
            return response.status_code, await read_capped(response, MAX_ANSWER_BYTES)
        finally:
            await response.aclose()

    async def _call(self, spec: ToolSpec, arguments: dict[str, Any], context: ToolContext) -> str:
        handler = spec.function  # imported, under the module rules, when the file was loaded
        if handler is None:
            raise _Failed(Outcome.ERROR)
        try:
            async with asyncio.timeout(spec.timeout_s):
                result = await handler(arguments, context)
        except TimeoutError:
            raise _Failed(Outcome.TIMEOUT) from None
        except Exception as exc:  # the handler's own bug or failure: the call goes on
            log.warning("tool %s raised %s", spec.name, type(exc).__name__)
            raise _Failed(Outcome.ERROR) from None
        try:
            output = _compact(as_data(result))
        except (TypeError, ValueError):
            raise _Failed(Outcome.BAD_ANSWER) from None
        if len(output.encode()) > MAX_ANSWER_BYTES:
            raise _Failed(Outcome.TOO_LARGE)
        return output


def _arguments(text: str) -> dict[str, Any]:
    try:
        arguments = json.loads(text)
    except ValueError:
        raise _Failed(Outcome.BAD_ARGUMENTS) from None
    if not isinstance(arguments, dict):
        raise _Failed(Outcome.BAD_ARGUMENTS)
    return arguments
