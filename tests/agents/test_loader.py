"""The agents file: a valid file becomes a book, every kind of mistake is named with its file,
agent, key and line."""

from __future__ import annotations

import asyncio
import hashlib
import sys

import pytest

from gateway.agents import END_CALL, TRANSFER_CALL, AgentsFileError, book_summary
from gateway.agents.loader import AgentsFileUnreadable
from gateway.agents.python_tools import ModuleRules
from providers.ai.config import Provider, ProviderOptions
from tests.agents.conftest import EXAMPLE, load

MINIMAL = """
[agents.only]
providers = ["echo"]
"""


def problems(path, **kwargs) -> list[str]:
    with pytest.raises(AgentsFileError) as info:
        load(path, **kwargs)
    return info.value.problems


def one_problem(path, **kwargs) -> str:
    found = problems(path, **kwargs)
    assert len(found) == 1, found
    return found[0]


def test_the_example_file_loads():
    book = load(EXAMPLE)
    assert set(book.profiles) == {"support", "sales"}
    assert book.default.name == "support"
    support, sales = book.get("support"), book.get("sales")
    assert support.numbers == ("+14155550199",)
    assert support.providers == ("openai", "deepgram", "echo")
    assert support.options.greeting.startswith("Thanks for calling")
    assert support.options.provider(Provider.OPENAI) == ProviderOptions(None, "marin")
    assert support.transfer == {"billing": "+14155550123", "sales": "sip:sales@example.com"}
    assert support.record is False and sales.record is None
    lookup = support.tool("lookup_order")
    assert lookup.handler == "order_tools:lookup_order" and lookup.function is not None
    assert lookup.timeout_s == 2.0 and lookup.url is None
    callback = sales.tool("book_callback")
    assert callback.url == "https://api.example.com/voice/tools" and callback.send_caller
    assert book.source == EXAMPLE and len(book.digest) == 64


def test_routing_by_dialed_number_falls_back_to_the_default():
    book = load(EXAMPLE)
    assert book.for_number("+14155550100").name == "sales"
    assert book.for_number("+14155550199").name == "support"
    assert book.for_number("+14155550111").name == "support"
    assert book.for_number(None).name == "support"
    assert book.for_number("14155550100").name == "support"  # exact E.164 only


def test_functions_are_the_tools_then_transfer_then_end_call():
    book = load(EXAMPLE)
    support = book.get("support")
    names = [f.name for f in support.functions()]
    assert names == ["lookup_order", TRANSFER_CALL, END_CALL]
    transfer = support.functions()[1]
    assert transfer.parameters["required"] == ["destination"]
    assert transfer.parameters["properties"]["destination"]["enum"] == ["billing", "sales"]
    assert "billing, sales" in transfer.description
    assert support.functions()[2].parameters == {"type": "object", "properties": {}}
    assert support.agent_options().tools == support.functions()
    # No transfer table: no transfer_call.
    assert [f.name for f in book.get("sales").functions()] == ["book_callback", END_CALL]


def test_end_call_can_be_turned_off(write):
    path = write(MINIMAL + "end_call = false\n")
    assert load(path).get("only").functions() == ()


def test_max_concurrent_calls_caps_an_agent(write):
    assert load(write(MINIMAL)).get("only").max_concurrent_calls is None
    assert load(write(MINIMAL + "max_concurrent_calls = 3\n")).get("only").max_concurrent_calls == 3


def test_a_single_agent_is_the_default(write):
    book = load(write(MINIMAL))
    assert book.default.name == "only" and book.for_number("+14155550100").name == "only"
    assert "the only agent serves every call" in one_problem(write(MINIMAL + "default = false\n"))


def test_several_agents_need_exactly_one_default(write):
    two = MINIMAL + '[agents.other]\nproviders = ["echo"]\n'
    assert "no default agent" in one_problem(write(two))
    both = two.replace('["echo"]', '["echo"]\ndefault = true')
    assert "more than one default agent: only, other" in one_problem(write(both))


def test_a_syntax_error_names_line_and_column(write):
    path = write('[agents.a]\nproviders = ["echo"]\nnumbers = [1,, 2]\n')
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:3:14: TOML syntax: ")
    path = write('[agents.a]\nproviders = ["echo"\n')
    assert one_problem(path).startswith(f"{path}: TOML syntax: Unclosed array")


def test_unknown_keys_are_named_with_their_line(write):
    path = write(
        """
        [agents.only]
        providers = ["echo"]
        greting = "hello"

        [[agents.only.tools]]
        name = "t"
        description = "d"
        handler = "x:y"
        timout_s = 3
        """
    )
    found = problems(path)
    assert f"{path}:4: agents.only.greting: unknown key" in found[0]
    assert any(
        p.startswith(f"{path}:10: agents.only.tools[0].timout_s: unknown key") for p in found
    )
    assert ":1: other_top: unknown key" in one_problem(
        write('other_top = 1\n[agents.a]\nproviders = ["echo"]\n')
    )


@pytest.mark.parametrize(
    ("body", "key", "text"),
    [
        ('providers = "echo"', "agents.only.providers", "must be a list of strings"),
        ("providers = []", "agents.only.providers", "at least one provider"),
        ('providers = ["openia"]', "agents.only.providers[0]", "unknown provider 'openia'"),
        ('providers = ["echo", "echo"]', "agents.only.providers[1]", "listed twice"),
        ('providers = ["echo"]\nnumbers = ["4155550100"]', "agents.only.numbers[0]", "E.164"),
        (
            'providers = ["echo"]\nnumbers = ["+1415", "+14155550100", "+14155550100"]',
            "agents.only.numbers[0]",
            "E.164",
        ),
        ('providers = ["echo"]\nrecord = "yes"', "agents.only.record", "true or false"),
        (
            'providers = ["echo"]\nmax_concurrent_calls = 0',
            "agents.only.max_concurrent_calls",
            "from 1 to",
        ),
        (
            'providers = ["echo"]\nmax_concurrent_calls = 2.5',
            "agents.only.max_concurrent_calls",
            "whole number",
        ),
        (
            'providers = ["echo"]\nmax_concurrent_calls = true',
            "agents.only.max_concurrent_calls",
            "whole number",
        ),
        ('providers = ["echo"]\ntranscripts = 1', "agents.only.transcripts", "true or false"),
        (
            'providers = ["echo"]\ninclude_transcript = true',
            "agents.only.include_transcript",
            "needs transcripts = true",
        ),
        ('providers = ["echo"]\ngreeting = "a\\nb"', "agents.only.greeting", "one line"),
        ('providers = ["echo"]\ngreeting = ""', "agents.only.greeting", "non-empty"),
        ('providers = ["echo"]\ninstructions = 3', "agents.only.instructions", "non-empty string"),
        (
            'providers = ["echo"]\ntransfer = { Bad = "+14155550123" }',
            "agents.only.transfer.Bad",
            "destination keys",
        ),
        (
            'providers = ["echo"]\ntransfer = { a = "tel:123" }',
            "agents.only.transfer.a",
            "E.164 number or a sip:",
        ),
        (
            'providers = ["echo"]\ntransfer = { a = "sip:x@y\\"><Hangup/>" }',
            "agents.only.transfer.a",
            "sip:",
        ),
        (
            'providers = ["echo"]\n[agents.only.openai]\nvoice = "bad voice"',
            "agents.only.openai.voice",
            "model or voice name",
        ),
        (
            'providers = ["echo"]\n[agents.only.openai]\ncolour = "x"',
            "agents.only.openai.colour",
            "unknown key",
        ),
    ],
)
def test_bad_agent_values(write, body, key, text):
    path = write(f"[agents.only]\n{body}\n")
    found = problems(path)
    assert any(f": {key}: " in p and text in p for p in found), found
    assert all(p.startswith(str(path)) for p in found)


def test_greeting_and_instruction_caps(write):
    path = write(f'[agents.only]\nproviders = ["echo"]\ngreeting = "{"a" * 501}"\n')
    assert "longer than 500 characters" in one_problem(path)
    path = write(f'[agents.only]\nproviders = ["echo"]\ninstructions = "{"a" * 20_001}"\n')
    assert "longer than 20000 characters" in one_problem(path)


def test_agent_names_must_be_metric_labels(write):
    problem = one_problem(write('[agents."Support Line"]\nproviders = ["echo"]\n'))
    assert 'agents."Support Line": agent names are 1 to 32' in problem


def test_a_number_listed_by_two_agents_is_an_error(write):
    path = write(
        """
        [agents.a]
        default = true
        providers = ["echo"]
        numbers = ["+14155550100"]

        [agents.b]
        providers = ["echo"]
        numbers = ["+14155550101", "+14155550100"]
        """
    )
    problem = one_problem(path)
    assert problem == f"{path}:9: agents.b.numbers[1]: already listed by agent 'a'"
    assert "4155550100" not in problem.replace(str(path), "")  # positions, never the number


def test_production_needs_configured_providers_and_https(write):
    path = write(
        """
        [agents.only]
        providers = ["openai", "gemini"]
        [[agents.only.tools]]
        name = "t"
        description = "d"
        url = "http://127.0.0.1:9/x"
        """
    )
    assert load(path, production=False).get("only").tool("t").url == "http://127.0.0.1:9/x"
    found = problems(path, production=True)
    assert any("providers[1]: 'gemini' is not configured" in p for p in found)
    assert any("tools[0].url: must use https in production" in p for p in found)
    assert len(found) == 2


TOOL = """
[agents.only]
providers = ["echo"]
[[agents.only.tools]]
name = "lookup"
description = "Look it up"
"""


@pytest.mark.parametrize(
    ("lines", "key", "text"),
    [
        (
            'url = "https://a.example/x"\nhandler = "m:f"',
            "agents.only.tools[0]",
            "exactly one of url and handler",
        ),
        ("", "agents.only.tools[0]", "exactly one of url and handler"),
        ('url = "ftp://a.example/x"', "tools[0].url", "https://"),
        ('url = "https://user:pw@a.example/x"', "tools[0].url", "credentials"),
        ('url = "https://a.example/x#frag"', "tools[0].url", "fragment"),
        ('url = "https://a.example:99999/x"', "tools[0].url", "not a valid URL"),
        ('url = "https:///x"', "tools[0].url", "https://"),
        ('url = "https://a.example/x"\ntimeout_s = 0', "tools[0].timeout_s", "(0, 30]"),
        ('url = "https://a.example/x"\ntimeout_s = 31', "tools[0].timeout_s", "(0, 30]"),
        ('url = "https://a.example/x"\ntimeout_s = true', "tools[0].timeout_s", "(0, 30]"),
        ('url = "https://a.example/x"\nsend_caller = 1', "tools[0].send_caller", "true or false"),
        (
            'url = "https://a.example/x"\nparameters = { type = "string" }',
            "tools[0].parameters.type",
            '"object"',
        ),
        (
            'url = "https://a.example/x"\nparameters = { type = "object", properties = { a = 1 } }',
            "tools[0].parameters.properties",
            "table of tables",
        ),
        (
            'url = "https://a.example/x"\nparameters = { type = "object", required = ["a"] }',
            "tools[0].parameters.required",
            "names of properties",
        ),
        ('handler = "no_colon"', "tools[0].handler", "package.module:function"),
        ("handler = 3", "tools[0].handler", "must be a string"),
    ],
)
def test_bad_tools(write, lines, key, text):
    path = write(TOOL + lines + "\n")
    found = problems(path)
    assert any(key in p and text in p for p in found), found


def test_tool_names_checked_reserved_and_unique(write):
    for name in (END_CALL, TRANSFER_CALL):
        path = write(TOOL.replace('"lookup"', f'"{name}"') + 'url = "https://a.example/x"\n')
        assert f"'{name}' is a built-in tool" in one_problem(path)
    path = write(TOOL.replace('"lookup"', '"has space"') + 'url = "https://a.example/x"\n')
    assert "tool names are 1 to 64" in one_problem(path)
    twice = (
        TOOL
        + 'url = "https://a.example/x"\n'
        + TOOL.split("\n", 3)[3]
        + 'url = "https://b.example/"\n'
    )
    assert "tools[1].name: another tool is called 'lookup'" in one_problem(write(twice))


def test_parameters_are_size_capped(write):
    big = ", ".join(f'p{i} = {{ type = "string", description = "{"x" * 100}" }}' for i in range(80))
    path = write(
        TOOL
        + 'url = "https://a.example/x"\n'
        + f'parameters = {{ type = "object", properties = {{ {big} }} }}\n'
    )
    assert "larger than 8192 bytes" in one_problem(path)


def test_tool_and_agent_counts_are_capped(write):
    tools = "".join(
        f'[[agents.only.tools]]\nname = "t{i}"\ndescription = "d"\nurl = "https://a.example/"\n'
        for i in range(33)
    )
    assert "more than 32 tools" in one_problem(
        write('[agents.only]\nproviders = ["echo"]\n' + tools)
    )
    agents = "".join(f'[agents.a{i}]\nproviders = ["echo"]\n' for i in range(65))
    assert "more than 64 agents" in one_problem(write(agents))


def test_a_handler_in_a_listed_directory_is_imported(write, module_name, tmp_path):
    (tmp_path / f"{module_name}.py").write_text(
        "async def lookup(arguments, context):\n    return {'ok': True}\n"
    )
    book = load(write(TOOL + f'handler = "{module_name}:lookup"\n'))
    spec = book.get("only").tool("lookup")
    assert spec.function is not None and spec.function.__module__ == module_name


@pytest.mark.parametrize(
    ("source", "attribute", "text"),
    [
        ("def lookup(arguments, context):\n    return 1\n", "lookup", "is not an async function"),
        ("x = 1\n", "lookup", "has no attribute 'lookup'"),
        ("raise RuntimeError('boom')\n", "lookup", "cannot import"),
        ("import not_a_module_anywhere_xyz\n", "lookup", "ModuleNotFoundError"),
        (
            "class Lookup:\n    async def __call__(self, a, c):\n        return 1\n",
            "Lookup",
            "is not an async function",
        ),
    ],
)
def test_handler_import_problems_name_agent_and_tool(
    write, module_name, tmp_path, source, attribute, text
):
    (tmp_path / f"{module_name}.py").write_text(source)
    path = write(TOOL + f'handler = "{module_name}:{attribute}"\n')
    problem = one_problem(path)
    assert problem.startswith(f"{path}:7: agents.only.tools[0].handler: ") and text in problem


def test_an_async_callable_instance_is_a_handler(write, module_name, tmp_path):
    (tmp_path / f"{module_name}.py").write_text(
        "class Lookup:\n    async def __call__(self, a, c):\n        return 1\nlookup = Lookup()\n"
    )
    assert load(write(TOOL + f'handler = "{module_name}:lookup"\n')).get("only").tool("lookup")


def test_a_missing_module_is_a_problem(write):
    problem = one_problem(write(TOOL + 'handler = "surely_missing_pkg_q.tools:f"\n'))
    assert "cannot import 'surely_missing_pkg_q.tools'" in problem


def test_unreadable_empty_and_odd_files(write, tmp_path):
    with pytest.raises(AgentsFileUnreadable):
        load(tmp_path / "absent.toml")
    with pytest.raises(AgentsFileUnreadable):
        load(tmp_path)
    assert "missing: define agents" in one_problem(write(""))
    assert "no agent defined" in one_problem(write("[agents]\n"))
    assert "agents: must be a table" in one_problem(write("agents = 3\n"))
    assert "agents.a: must be a table" in one_problem(write("[agents]\na = 3\n"))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[agents]")
    assert "not UTF-8" in one_problem(binary)
    huge = tmp_path / "huge.toml"
    huge.write_text("#" * (1024 * 1024 + 1))
    assert "larger than" in one_problem(huge)


def test_the_summary_masks_numbers_and_hides_urls():
    summary = book_summary(load(EXAMPLE))
    assert [a["name"] for a in summary] == ["support", "sales"]
    support = summary[0]
    assert support["numbers"] == ["+1********99"] and support["number_count"] == 1
    assert support["transfer"] == ["billing", "sales"]
    assert support["tools"] == [{"name": "lookup_order", "kind": "python", "timeout_s": 2.0}]
    assert support["voices"]["openai"] == {"model": None, "voice": "marin"}
    # Where its calls and transfers may go: prefixes only, from its own numbers here.
    assert support["calling"]["allowed_destinations"] == ["+1"]
    assert support["calling"]["defaulted"] is True
    assert support["calling"]["allow_denied_prefixes"] == []
    text = repr(summary)
    assert (
        "14155550199" not in text and "api.example.com" not in text and "+14155550123" not in text
    )


def test_the_built_in_book_keeps_todays_behaviour():
    from gateway.agents import built_in_book
    from gateway.settings import Settings

    settings = Settings.from_env(
        {"VOICEGW_AGENT_GREETING": "Hello there", "VOICEGW_OPENAI_VOICE": "cedar"}
    )
    book = built_in_book(settings)
    (profile,) = book.profiles.values()
    assert profile.name == "default" and book.default is profile and book.source is None
    assert book.for_number("+14155550100") is profile
    assert profile.providers == settings.providers
    assert profile.functions() == () and profile.agent_options().tools == ()
    assert profile.options.greeting == "Hello there"
    assert profile.options.provider(Provider.OPENAI).voice == "cedar"
    assert book.digest != built_in_book(Settings.from_env({})).digest


def test_transcripts_are_off_unless_an_agent_turns_them_on(write):
    book = load(
        write(
            """
            [agents.quiet]
            providers = ["echo"]
            default = true
            [agents.kept]
            providers = ["openai"]
            transcripts = true
            [agents.off]
            providers = ["echo"]
            transcripts = false
            """
        )
    )
    quiet, kept, off = book.get("quiet"), book.get("kept"), book.get("off")
    assert (quiet.transcripts, kept.transcripts, off.transcripts) == (False, True, False)
    # What the provider session is given: transcription asked for only where turned on.
    assert kept.agent_options().transcripts is True
    assert quiet.agent_options().transcripts is False
    summary = {a["name"]: a["transcripts"] for a in book_summary(book)}
    assert summary == {"quiet": False, "kept": True, "off": False}


@pytest.mark.parametrize("where", ["file", "directory"])
def test_an_agents_file_others_may_write_is_refused(tmp_path, where):
    home = tmp_path / "conf"
    home.mkdir(mode=0o700)
    path = home / "agents.toml"
    path.write_text('[agents.only]\nproviders = ["echo"]\n')
    path.chmod(0o600)
    load(path, configured={"echo"})  # owner-only: fine
    (path if where == "file" else home).chmod(0o620 if where == "file" else 0o770)
    with pytest.raises(AgentsFileError) as refused:
        load(path, configured={"echo"})
    (problem,) = refused.value.problems
    assert "writable by group or others" in problem and "chmod go-w" in problem


# -- where handler modules may come from (VOICEGW_TOOL_MODULES_PATH) -------------------------

MARKER_SOURCE = (
    "import pathlib\n"
    "pathlib.Path(__file__).with_suffix('.ran').write_text('imported')\n"
    "async def lookup(arguments, context):\n    return 1\n"
)


def test_a_handler_next_to_the_file_is_not_imported_unless_listed(write, module_name, tmp_path):
    (tmp_path / f"{module_name}.py").write_text(MARKER_SOURCE)
    path = write(TOOL + f'handler = "{module_name}:lookup"\n')
    problem = one_problem(path, modules=ModuleRules())
    assert f"no module named {module_name!r}" in problem
    assert "VOICEGW_TOOL_MODULES_PATH" in problem
    assert not (tmp_path / f"{module_name}.ran").exists()
    assert load(path).get("only").tool("lookup").function is not None  # listed: imported


def test_a_handler_in_the_data_directory_is_refused_before_it_runs(write, module_name, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / f"{module_name}.py").write_text(MARKER_SOURCE)
    path = write(TOOL + f'handler = "{module_name}:lookup"\n')
    # Even listed (the settings refuse that too), the data directory never supplies code.
    problem = one_problem(path, modules=ModuleRules(paths=(data,), forbidden=(data,)))
    assert f"module {module_name!r} is in the data directory" in problem
    assert not (data / f"{module_name}.ran").exists()


def test_a_directory_put_on_the_import_path_later_is_not_trusted(write, module_name, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f"{module_name}.py").write_text(MARKER_SOURCE)
    sys.path.insert(0, str(elsewhere))  # undone by the conftest's fixture
    path = write(TOOL + f'handler = "{module_name}:lookup"\n')
    problem = one_problem(path, modules=ModuleRules())
    assert "neither installed nor listed in VOICEGW_TOOL_MODULES_PATH" in problem
    assert not (elsewhere / f"{module_name}.ran").exists()


@pytest.mark.parametrize("where", ["file", "directory"])
def test_a_handler_module_others_may_write_is_refused(write, module_name, tmp_path, where):
    tools = tmp_path / "tools"
    tools.mkdir(mode=0o700)
    module = tools / f"{module_name}.py"
    module.write_text(MARKER_SOURCE)
    (module if where == "file" else tools).chmod(0o666 if where == "file" else 0o777)
    path = write(TOOL + f'handler = "{module_name}:lookup"\n')
    problem = one_problem(path, modules=ModuleRules(paths=(tools,)))
    assert "writable by group or others" in problem and "chmod go-w" in problem
    assert not (tools / f"{module_name}.ran").exists()


def test_an_installed_module_may_serve_a_handler(write):
    path = write(TOOL + 'handler = "asyncio:sleep"\n')  # the standard library: installed
    spec = load(path, modules=ModuleRules()).get("only").tool("lookup")
    assert spec.function is asyncio.sleep


def test_a_refused_file_carries_the_hash_of_what_was_read(write):
    path = write('[agents.only]\nproviders = ["nope"]\n')
    with pytest.raises(AgentsFileError) as refused:
        load(path)
    assert refused.value.digest == hashlib.sha256(path.read_bytes()).hexdigest()


# -- the toll-fraud guard ----------------------------------------------------------------------


def test_allowed_destinations_default_to_the_country_codes_of_the_agents_numbers(write):
    only = load(write(MINIMAL + 'numbers = ["+14155550199"]\ncaller_ids = ["+442079460000"]\n'))
    profile = only.get("only")
    assert profile.allowed_destinations == ("+44", "+1") and profile.destinations_defaulted
    assert profile.allow_denied_prefixes == ()
    # Nothing of its own: nothing allowed.
    assert load(write(MINIMAL)).get("only").allowed_destinations == ()
    listed = load(write(MINIMAL + 'allowed_destinations = ["+1", "+4420"]\n')).get("only")
    assert listed.allowed_destinations == ("+1", "+4420") and not listed.destinations_defaulted


def test_dial_caps_of_an_agent(write):
    profile = load(write(MINIMAL + "dials_per_minute = 5\ndial_minutes_per_day = 90\n"))
    assert (profile.get("only").dials_per_minute, profile.get("only").dial_minutes_per_day) == (
        5,
        90,
    )
    assert load(write(MINIMAL)).get("only").dials_per_minute is None
    assert "agents.only.dials_per_minute: must be from 1" in one_problem(
        write(MINIMAL + "dials_per_minute = 0\n")
    )
    assert "agents.only.dial_minutes_per_day: must be a whole number" in one_problem(
        write(MINIMAL + 'dial_minutes_per_day = "lots"\n')
    )


def test_a_transfer_to_a_denied_destination_stops_the_load(write):
    text = MINIMAL + 'numbers = ["+14155550199"]\ntransfer = { premium = "+19005550123" }\n'
    problem = one_problem(write(text))
    assert "agents.only.transfer.premium" in problem and "deny list" in problem
    assert "allow_denied_prefixes" in problem
    assert "5550123" not in problem  # the number is named by its key only
    lifted = load(write(text + 'allow_denied_prefixes = ["+1900"]\n'))
    assert lifted.get("only").transfer == {"premium": "+19005550123"}
    # A SIP URI carrying a denied number is judged as that number.
    sip = (
        MINIMAL
        + 'numbers = ["+14155550199"]\ntransfer = { t = "sip:+18095550123@trunk.example" }\n'
    )
    assert "deny list" in one_problem(write(sip))


def test_a_transfer_outside_the_allowed_destinations_stops_the_load(write):
    text = MINIMAL + 'numbers = ["+14155550199"]\ntransfer = { london = "+442079460000" }\n'
    problem = one_problem(write(text))
    assert "agents.only.transfer.london: outside allowed_destinations" in problem
    assert "country codes of the agent's caller_ids and numbers" in problem
    assert load(write(text + 'allowed_destinations = ["+1", "+44"]\n')).get("only").transfer
    # A SIP endpoint that names no number is the operator's choice.
    sip = MINIMAL + 'transfer = { desk = "sip:desk@pbx.example.com" }\n'
    assert load(write(sip)).get("only").transfer == {"desk": "sip:desk@pbx.example.com"}


@pytest.mark.parametrize(
    ("line", "where", "why"),
    [
        ('allowed_destinations = ["1"]', "allowed_destinations[0]", "E.164 prefix"),
        ('allowed_destinations = ["+9991"]', "allowed_destinations[0]", "country calling code"),
        ('allowed_destinations = "+1"', "allowed_destinations", "list of strings"),
        ('allow_denied_prefixes = ["+1"]', "allow_denied_prefixes[0]", "narrower than a country"),
        ('allow_denied_prefixes = ["+44"]', "allow_denied_prefixes[0]", "narrower than a country"),
        ('allow_denied_prefixes = ["x"]', "allow_denied_prefixes[0]", "E.164 prefix"),
    ],
)
def test_bad_destination_rules_are_named(write, line, where, why):
    problem = one_problem(write(MINIMAL + line + "\n"))
    assert f"agents.only.{where}" in problem and why in problem
