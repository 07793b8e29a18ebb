"""The agents file (TOML) to an :class:`AgentBook`, or every problem with it at once.

Each problem is one line: ``FILE:LINE: agents.NAME.KEY: what is wrong`` (the line where it can
be found; a syntax error also gives the column). Values that may be personal data (numbers,
transfer destinations) are named by their position, never echoed.

Rules a user may wonder about:

* A file with one agent makes it the default (``default = true`` may be left out). With several,
  exactly one says ``default = true``: it serves every number no agent lists.
* Tool URLs must be ``https`` in production; plain ``http`` is accepted outside production.
* A ``handler`` is imported while the file is loaded: loading runs the handler module's
  top-level code. Its module must be installed or in a directory of
  ``VOICEGW_TOOL_MODULES_PATH`` (``python_tools.ModuleRules``); the file's own directory is
  not searched unless it is listed there.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from gateway.agents.profiles import (
    RESERVED_TOOLS,
    AgentBook,
    AgentProfile,
    AgentsFileError,
    ToolSpec,
)
from gateway.agents.python_tools import (
    HandlerError,
    ModuleRules,
    group_or_other_writable,
    resolve_handler,
)
from gateway.calls.destinations import (
    DestinationPolicy,
    Refusal,
    default_destinations,
    destination_problem,
    override_problem,
)
from gateway.settings import MAX_SPOKEN_TEXT, MODEL_NAME, PROVIDERS, Settings
from providers.ai.config import AgentOptions, Provider, ProviderOptions

MAX_FILE_BYTES: Final = 1024 * 1024
MAX_AGENTS: Final = 64
MAX_TOOLS: Final = 32
MAX_NUMBERS: Final = 1000
MAX_TRANSFER: Final = 32
MAX_INSTRUCTIONS: Final = 20_000
MAX_DESCRIPTION: Final = 1024
MAX_PARAMETERS_BYTES: Final = 8 * 1024
MAX_TIMEOUT_S: Final = 30.0
MAX_URL: Final = 2048

NAME: Final = re.compile(r"[a-z0-9_-]{1,32}")
TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
E164: Final = re.compile(r"\+[1-9]\d{6,14}")
SIP_URI: Final = re.compile(
    r"sips?:(?:[A-Za-z0-9._~%!$&'()*+,;=:-]+@)?[A-Za-z0-9.-]+(?::\d{1,5})?(?:;[A-Za-z0-9=._~-]+)*"
)

MAX_CONCURRENT_CALLS: Final = 100_000
MAX_DIALS_PER_MINUTE: Final = 100_000
MAX_DIAL_MINUTES_PER_DAY: Final = 10_000_000
MAX_PREFIXES: Final = 300

AGENT_KEYS: Final = frozenset(
    {
        "default",
        "numbers",
        "caller_ids",
        "max_concurrent_calls",
        "allowed_destinations",
        "allow_denied_prefixes",
        "dials_per_minute",
        "dial_minutes_per_day",
        "providers",
        "instructions",
        "greeting",
        "record",
        "transcripts",
        "include_transcript",
        "transfer",
        "tools",
        "end_call",
        *(str(p) for p in Provider),
    }
)
TOOL_KEYS: Final = frozenset(
    {"name", "description", "parameters", "url", "handler", "timeout_s", "send_caller"}
)
PROVIDER_KEYS: Final = frozenset({"model", "voice"})
_SYNTAX_AT: Final = re.compile(r"(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)")

Path_ = tuple[str | int, ...]


def configured_providers(settings: Settings) -> frozenset[str]:
    """The providers a call could reach with ``settings``: those whose API key is set, and
    ``echo`` outside production."""
    keys = {
        "openai": settings.openai_api_key,
        "deepgram": settings.deepgram_api_key,
        "gemini": settings.gemini_api_key,
    }
    chosen = {name for name, key in keys.items() if key is not None}
    if not settings.production:
        chosen.add("echo")
    return frozenset(chosen)


def load_agents(
    path: str | Path,
    *,
    known_providers: Collection[str] = PROVIDERS,
    configured_providers: Collection[str],
    production: bool,
    modules: ModuleRules,
) -> AgentBook:
    """Read and check the agents file at ``path``, importing its handlers under ``modules``;
    raises :class:`AgentsFileError` listing every problem (:class:`AgentsFileUnreadable` when
    the file cannot be read at all). The error carries the SHA-256 of what was read."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AgentsFileUnreadable([f"{path}: cannot read the file ({exc.strerror})"]) from None
    digest = hashlib.sha256(data).hexdigest()
    if loose := writable_by_others(path):
        raise AgentsFileError([loose], digest)
    if len(data) > MAX_FILE_BYTES:
        raise AgentsFileError([f"{path}: larger than {MAX_FILE_BYTES} bytes"], digest)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AgentsFileError([f"{path}: not UTF-8 text"], digest) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AgentsFileError([_syntax_problem(path, exc)], digest) from None
    checker = _Checker(path, text, known_providers, configured_providers, production, modules)
    profiles = checker.book(document)
    if checker.problems:
        raise AgentsFileError(checker.problems, digest)
    return AgentBook(profiles, path, digest)


def writable_by_others(path: Path) -> str | None:
    """Why the agents file may not be trusted: it, or the directory holding it, is writable by
    group or others (whoever can write it chooses the agents' instructions, transfer numbers
    and the Python code the gateway imports). A sticky directory (``/tmp``) still lets others
    create files beside it, so it counts too. None when only its owner may write both."""
    for place, what in ((path, "the file"), (path.resolve().parent, "its directory")):
        if (mode := group_or_other_writable(place)) is not None:
            return (
                f"{path}: {what} is writable by group or others (mode {mode:o}); "
                f"it names code the gateway runs: chmod go-w {place}"
            )
    return None


class AgentsFileUnreadable(AgentsFileError):
    """The agents file could not be read (missing, a directory, no permission)."""


def _syntax_problem(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    line = getattr(exc, "lineno", None)  # Python 3.14 and later
    if line is not None:
        return f"{path}:{line}:{getattr(exc, 'colno', 0)}: TOML syntax: {getattr(exc, 'msg', exc)}"
    match = _SYNTAX_AT.fullmatch(str(exc))
    if match is None:
        return f"{path}: TOML syntax: {exc}"
    return f"{path}:{match['line']}:{match['col']}: TOML syntax: {match['msg']}"


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            shown = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            text += f".{shown}" if text else shown
    return text


def _key_lines(text: str) -> dict[Path_, int]:
    """Where each table header and ``key =`` line of ``text`` is (1-based), by key path; a
    best effort for plain and quoted keys, enough to point a user at the right line."""
    found: dict[Path_, int] = {}
    current: Path_ = ()
    arrays: dict[Path_, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("[["):
            name = _split_key(line[2:].split("]]", 1)[0])
            index = arrays[name] = arrays.get(name, -1) + 1
            current = (*name, index)
        elif line.startswith("["):
            current = _split_key(line[1:].split("]", 1)[0])
        elif "=" in line and not line.startswith("#"):
            current_key = (*current, *_split_key(line.split("=", 1)[0]))
            found.setdefault(current_key, number)
            continue
        else:
            continue
        found.setdefault(current, number)
    return found


def _split_key(key: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in key.split("."))


class _Checker:
    def __init__(
        self,
        path: Path,
        text: str,
        known: Collection[str],
        configured: Collection[str],
        production: bool,
        modules: ModuleRules,
    ) -> None:
        self.path = path
        self.modules = modules
        self.lines = _key_lines(text)
        self.known = known
        self.configured = configured
        self.production = production
        self.problems: list[str] = []

    def problem(self, where: Path_, message: str) -> None:
        line = next(
            (self.lines[where[:n]] for n in range(len(where), 0, -1) if where[:n] in self.lines),
            None,
        )
        at = f"{self.path}:{line}" if line is not None else str(self.path)
        self.problems.append(f"{at}: {_dotted(where)}: {message}")

    # -- typed values --------------------------------------------------------------------

    def table(self, value: object, where: Path_) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.problem(where, "must be a table")
            return None
        return value

    def keys(self, table: Mapping[str, Any], allowed: frozenset[str], where: Path_) -> None:
        for key in table:
            if key not in allowed:
                self.problem((*where, key), f"unknown key (expected one of {sorted(allowed)})")

    def boolean(self, value: object, where: Path_) -> bool | None:
        if not isinstance(value, bool):
            self.problem(where, "must be true or false")
            return None
        return value

    def text(self, value: object, where: Path_, *, cap: int, one_line: bool) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.problem(where, "must be a non-empty string")
            return None
        if len(value) > cap:
            self.problem(where, f"longer than {cap} characters")
            return None
        if one_line and not value.isprintable():
            self.problem(where, "must be one line of printable text")
            return None
        return value

    def strings(self, value: object, where: Path_, *, cap: int) -> list[str] | None:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(where, "must be a list of strings")
            return None
        if len(value) > cap:
            self.problem(where, f"more than {cap} entries")
            return None
        return value

    def numbers(self, value: object, where: Path_) -> tuple[str, ...]:
        items = self.strings(value, where, cap=MAX_NUMBERS)
        if items is None:
            return ()
        seen: set[str] = set()
        for i, number in enumerate(items):
            if not E164.fullmatch(number):
                self.problem((*where, i), "not an E.164 number (+, then 7 to 15 digits)")
            elif number in seen:
                self.problem((*where, i), "listed twice")
            seen.add(number)
        return tuple(items)

    # -- the document ----------------------------------------------------------------------

    def book(self, document: dict[str, Any]) -> dict[str, AgentProfile]:
        self.keys(document, frozenset({"agents"}), ())
        if "agents" not in document:
            self.problem(("agents",), "missing: define agents as [agents.NAME] tables")
            return {}
        agents = self.table(document["agents"], ("agents",))
        if agents is None:
            return {}
        if not agents:
            self.problem(("agents",), "no agent defined (add an [agents.NAME] table)")
            return {}
        if len(agents) > MAX_AGENTS:
            self.problem(("agents",), f"more than {MAX_AGENTS} agents")
            return {}
        profiles: dict[str, AgentProfile] = {}
        owners: dict[str, str] = {}
        for name, raw in agents.items():
            where: Path_ = ("agents", name)
            if not NAME.fullmatch(name):
                self.problem(where, "agent names are 1 to 32 of a-z 0-9 _ -")
            table = self.table(raw, where)
            if table is None:
                continue
            profile = self.agent(name, table, single=len(agents) == 1)
            if profile is None:
                continue
            for i, number in enumerate(profile.numbers):
                owner = owners.setdefault(number, name)
                if owner != name:
                    self.problem((*where, "numbers", i), f"already listed by agent {owner!r}")
            profiles[name] = profile
        defaults = [name for name, profile in profiles.items() if profile.default]
        if len(defaults) > 1:
            self.problem(("agents",), f"more than one default agent: {', '.join(defaults)}")
        elif not defaults and profiles and len(profiles) == len(agents):
            self.problem(("agents",), "no default agent: set default = true on one agent")
        return profiles

    def agent(self, name: str, table: dict[str, Any], *, single: bool) -> AgentProfile | None:
        where: Path_ = ("agents", name)
        before = len(self.problems)
        self.keys(table, AGENT_KEYS, where)
        default = single
        if "default" in table:
            default = bool(self.boolean(table["default"], (*where, "default")))
            if single and not default:
                self.problem((*where, "default"), "the only agent serves every call: remove it")
        numbers = self.numbers(table.get("numbers", []), (*where, "numbers"))
        caller_ids = self.numbers(table.get("caller_ids", []), (*where, "caller_ids"))
        providers = self.providers(table.get("providers"), (*where, "providers"))
        options = AgentOptions(
            instructions=self.optional_text(table, "instructions", where, MAX_INSTRUCTIONS, False),
            greeting=self.optional_text(table, "greeting", where, MAX_SPOKEN_TEXT, True),
            providers=self.provider_options(table, where),
        )
        record = None
        if "record" in table:
            record = self.boolean(table["record"], (*where, "record"))
        transcripts = False
        if "transcripts" in table:
            transcripts = self.boolean(table["transcripts"], (*where, "transcripts")) is True
        include_transcript = False
        if "include_transcript" in table:
            key = (*where, "include_transcript")
            include_transcript = self.boolean(table["include_transcript"], key) is True
            if include_transcript and not transcripts:
                self.problem(key, "needs transcripts = true (nothing is kept to send)")
        end_call = True
        if "end_call" in table:
            end_call = self.boolean(table["end_call"], (*where, "end_call")) is not False
        transfer = self.transfer(table.get("transfer", {}), (*where, "transfer"))
        tools = self.tools(table.get("tools", []), (*where, "tools"))
        max_calls = self.whole(table, "max_concurrent_calls", where, MAX_CONCURRENT_CALLS)
        dials_per_minute = self.whole(table, "dials_per_minute", where, MAX_DIALS_PER_MINUTE)
        dial_minutes = self.whole(table, "dial_minutes_per_day", where, MAX_DIAL_MINUTES_PER_DAY)
        defaulted = "allowed_destinations" not in table
        if defaulted:
            allowed = default_destinations((*caller_ids, *numbers))
        else:
            allowed = self.prefixes(
                table["allowed_destinations"], (*where, "allowed_destinations"), destination_problem
            )
        overrides = self.prefixes(
            table.get("allow_denied_prefixes", []),
            (*where, "allow_denied_prefixes"),
            override_problem,
        )
        self.transfer_allowed(transfer, DestinationPolicy(allowed, overrides), where, defaulted)
        if len(self.problems) > before:
            return None
        return AgentProfile(
            name=name,
            default=default,
            numbers=numbers,
            providers=providers,
            options=options,
            record=record,
            transfer=transfer,
            tools=tools,
            end_call=end_call,
            caller_ids=caller_ids,
            max_concurrent_calls=max_calls,
            transcripts=transcripts,
            include_transcript=include_transcript,
            allowed_destinations=allowed,
            allow_denied_prefixes=overrides,
            destinations_defaulted=defaulted,
            dials_per_minute=dials_per_minute,
            dial_minutes_per_day=dial_minutes,
        )

    def whole(self, table: Mapping[str, Any], key: str, where: Path_, hi: int) -> int | None:
        """An optional cap ``key``: a whole number from 1 to ``hi``."""
        if key not in table:
            return None
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem((*where, key), "must be a whole number")
            return None
        if not 1 <= value <= hi:
            self.problem((*where, key), f"must be from 1 to {hi}")
            return None
        return value

    def prefixes(
        self, value: object, where: Path_, problem: Callable[[str], str | None]
    ) -> tuple[str, ...]:
        """A list of E.164 prefixes, each checked by ``problem``."""
        items = self.strings(value, where, cap=MAX_PREFIXES)
        if items is None:
            return ()
        for i, prefix in enumerate(items):
            if (why := problem(prefix)) is not None:
                self.problem((*where, i), why)
        return tuple(dict.fromkeys(items))

    def transfer_allowed(
        self, transfer: Mapping[str, str], policy: DestinationPolicy, where: Path_, default: bool
    ) -> None:
        """Every ``transfer`` destination passes the toll-fraud guard (named by key only)."""
        for key, destination in transfer.items():
            refusal = policy.check(destination)
            if refusal is Refusal.DENIED_PREFIX:
                self.problem(
                    (*where, "transfer", key),
                    "on the deny list (premium-rate or high-risk): lift its prefix with "
                    "allow_denied_prefixes if you mean it",
                )
            elif refusal is Refusal.NOT_ALLOWED:
                self.problem(
                    (*where, "transfer", key),
                    "outside allowed_destinations"
                    + (
                        " (by default the country codes of the agent's caller_ids and numbers): "
                        "list its prefix in allowed_destinations"
                        if default
                        else ""
                    ),
                )

    def optional_text(
        self, table: Mapping[str, Any], key: str, where: Path_, cap: int, one_line: bool
    ) -> str | None:
        if key not in table:
            return None
        return self.text(table[key], (*where, key), cap=cap, one_line=one_line)

    def providers(self, value: object, where: Path_) -> tuple[str, ...]:
        if value is None:
            self.problem(where, "missing: list the providers in failover order")
            return ()
        items = self.strings(value, where, cap=len(self.known))
        if items is None:
            return ()
        if not items:
            self.problem(where, "must list at least one provider")
        for i, provider in enumerate(items):
            if provider not in self.known:
                self.problem((*where, i), f"unknown provider {provider!r} ({sorted(self.known)})")
            elif items.index(provider) != i:
                self.problem((*where, i), f"{provider!r} listed twice")
            elif self.production and provider not in self.configured:
                self.problem(
                    (*where, i),
                    f"{provider!r} is not configured ("
                    + (
                        "echo is not used in production)"
                        if provider == "echo"
                        else "its API key is not set)"
                    ),
                )
        return tuple(items)

    def provider_options(
        self, table: Mapping[str, Any], where: Path_
    ) -> dict[Provider, ProviderOptions]:
        chosen: dict[Provider, ProviderOptions] = {}
        for provider in Provider:
            if str(provider) not in table:
                continue
            at = (*where, str(provider))
            sub = self.table(table[str(provider)], at)
            if sub is None:
                continue
            self.keys(sub, PROVIDER_KEYS, at)
            values: dict[str, str | None] = {}
            for key in sorted(PROVIDER_KEYS):
                value = sub.get(key)
                if value is not None and (
                    not isinstance(value, str) or not MODEL_NAME.fullmatch(value)
                ):
                    self.problem(
                        (*at, key),
                        "must be a model or voice name: at most 100 letters, digits and . _ : / -",
                    )
                    value = None
                values[key] = value
            chosen[provider] = ProviderOptions(values["model"], values["voice"])
        return chosen

    def transfer(self, value: object, where: Path_) -> dict[str, str]:
        table = self.table(value, where)
        if table is None:
            return {}
        if len(table) > MAX_TRANSFER:
            self.problem(where, f"more than {MAX_TRANSFER} destinations")
            return {}
        chosen: dict[str, str] = {}
        for key, destination in table.items():
            at = (*where, key)
            if not NAME.fullmatch(key):
                self.problem(at, "destination keys are 1 to 32 of a-z 0-9 _ -")
            elif not isinstance(destination, str) or not (
                E164.fullmatch(destination)
                or (len(destination) <= 256 and SIP_URI.fullmatch(destination))
            ):
                self.problem(at, "must be an E.164 number or a sip:/sips: URI")
            else:
                chosen[key] = destination
        return chosen

    def tools(self, value: object, where: Path_) -> tuple[ToolSpec, ...]:
        if not isinstance(value, list):
            self.problem(where, "must be an array of tables ([[agents.NAME.tools]])")
            return ()
        if len(value) > MAX_TOOLS:
            self.problem(where, f"more than {MAX_TOOLS} tools")
            return ()
        specs: list[ToolSpec] = []
        names: set[str] = set()
        for i, raw in enumerate(value):
            table = self.table(raw, (*where, i))
            if table is None:
                continue
            spec = self.tool(table, (*where, i))
            if spec is None:
                continue
            if spec.name in names:
                self.problem((*where, i, "name"), f"another tool is called {spec.name!r}")
            names.add(spec.name)
            specs.append(spec)
        return tuple(specs)

    def tool(self, table: dict[str, Any], where: Path_) -> ToolSpec | None:
        before = len(self.problems)
        self.keys(table, TOOL_KEYS, where)
        name = table.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            self.problem((*where, "name"), "tool names are 1 to 64 of A-Z a-z 0-9 _ -")
        elif name in RESERVED_TOOLS:
            self.problem((*where, "name"), f"{name!r} is a built-in tool: choose another name")
        description = self.text(
            table.get("description"), (*where, "description"), cap=MAX_DESCRIPTION, one_line=False
        )
        parameters = self.parameters(
            table.get("parameters", {"type": "object", "properties": {}}), (*where, "parameters")
        )
        url, handler = table.get("url"), table.get("handler")
        function = None
        if (url is None) == (handler is None):
            self.problem(where, "needs exactly one of url and handler")
        elif url is not None:
            self.url(url, (*where, "url"))
        elif not isinstance(handler, str):
            self.problem((*where, "handler"), "must be a string 'package.module:function'")
        else:
            try:
                function = resolve_handler(handler, self.modules)
            except HandlerError as exc:
                self.problem((*where, "handler"), str(exc))
        timeout_s = table.get("timeout_s", 5.0)
        if (
            isinstance(timeout_s, bool)
            or not isinstance(timeout_s, int | float)
            or not 0 < timeout_s <= MAX_TIMEOUT_S
        ):
            self.problem(
                (*where, "timeout_s"), f"must be a number of seconds in (0, {MAX_TIMEOUT_S:g}]"
            )
        send_caller = False
        if "send_caller" in table:
            send_caller = self.boolean(table["send_caller"], (*where, "send_caller")) is True
        if len(self.problems) > before:
            return None
        if not isinstance(name, str) or description is None or parameters is None:
            return None  # reported above
        return ToolSpec(
            name=name,
            description=description,
            parameters=parameters,
            url=url,
            handler=handler,
            timeout_s=float(timeout_s),
            send_caller=send_caller,
            function=function,
        )

    def parameters(self, value: object, where: Path_) -> dict[str, Any] | None:
        schema = self.table(value, where)
        if schema is None:
            return None
        if schema.get("type") != "object":
            self.problem((*where, "type"), 'must be "object" (the arguments are a JSON object)')
            return None
        properties = schema.get("properties", {})
        if not isinstance(properties, dict) or not all(
            isinstance(p, dict) for p in properties.values()
        ):
            self.problem((*where, "properties"), "must be a table of tables (one per argument)")
            return None
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(r in properties for r in required):
            self.problem((*where, "required"), "must list names of properties")
            return None
        if len(json.dumps(schema, separators=(",", ":"))) > MAX_PARAMETERS_BYTES:
            self.problem(where, f"larger than {MAX_PARAMETERS_BYTES} bytes as JSON")
            return None
        return schema

    def url(self, value: object, where: Path_) -> None:
        if not isinstance(value, str) or len(value) > MAX_URL:
            self.problem(where, f"must be a URL of at most {MAX_URL} characters")
            return
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError:
            self.problem(where, "not a valid URL")
            return
        if parts.scheme not in ("https", "http") or not parts.hostname:
            self.problem(where, "must be an https:// URL")
        elif parts.scheme == "http" and self.production:
            self.problem(where, "must use https in production")
        elif parts.username is not None or parts.password is not None:
            self.problem(
                where, "must not carry credentials (user:password@): the request is signed"
            )
        elif parts.fragment:
            self.problem(where, "must not have a #fragment")
