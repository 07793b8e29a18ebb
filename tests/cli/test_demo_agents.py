"""``voicegw demo --agents FILE`` and ``voicegw simulate call --to/--dtmf``: a new user sees a
tool call, a transfer and a hang-up happen on this machine. The demos run as real
subprocesses, as a user types them, with the repository's ``examples/agents.toml``; the
argument checks run through ``main`` in process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main as cli
from gateway.cli.carrier_api import CarrierCommand, twilio_action
from gateway.cli.demo_agents import default_presses, key_map, load_book
from gateway.cli.simulate import Press, parse_number, parse_presses
from tests.conftest import UNIT

VOICEGW = Path(sys.executable).parent / "voicegw"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "agents.toml"


def demo(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(
        [str(VOICEGW), "demo", *argv],
        env={"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path / "tmp")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
def test_demo_of_the_example_agents_looks_an_order_up_and_transfers_to_billing(tmp_path, carrier):
    result = demo(tmp_path, "--agents", str(EXAMPLES), "--carrier", carrier)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "agent: support (dialed +14155550199)" in out
    assert "keys: 1 lookup_order, 2 transfer_call, 3 end_call" in out
    # The carrier's side: the keys pressed, the transfer request, the stream closed normally.
    assert "DTMF 1 at 1.00 s" in out and "DTMF 2 at 2.50 s" in out
    assert "transfer requested to +14155550123" in out  # the file's billing number
    assert "closed by the gateway (1000)" in out
    # The gateway's side, from its audit trail: the Python tool ran, the transfer went through.
    lines = out.splitlines()
    (lookup,) = [ln.split() for ln in lines if ln.strip().startswith("lookup_order ")]
    assert lookup[1] == "ok" and lookup[-1] == "ms"
    (transfer,) = [ln.split() for ln in lines if ln.strip().startswith("transfer_call ")]
    assert transfer[1:4] == ["ok", "(to", "billing)"]
    assert "call outcome: transferred to billing (agent support)" in out
    assert "result: ok" in out
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "tmp").iterdir()) == []  # its temporary data directory is gone


def test_demo_of_the_sales_agent_signs_its_http_tool_and_hangs_up(tmp_path):
    result = demo(tmp_path, "--agents", str(EXAMPLES), "--to", "+14155550100")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "agent: sales (dialed +14155550100)" in out
    (book,) = [ln.split() for ln in out.splitlines() if ln.strip().startswith("book_callback ")]
    assert book[1] == "ok"  # answered by the local stand-in, not api.example.com
    assert "1 signature verified, 0 refused" in out
    assert "hang-up requested" in out
    assert "call outcome: agent_ended (agent sales)" in out


def test_demo_with_chosen_keys_presses_only_those(tmp_path):
    # 3 is end_call for the support agent: no lookup, no transfer.
    result = demo(tmp_path, "--agents", str(EXAMPLES), "--dtmf", "3@0.5", "--carrier", "telnyx")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DTMF 3 at 0.50 s" in result.stdout and "DTMF 1" not in result.stdout
    assert "hang-up requested" in result.stdout
    assert "transfer requested" not in result.stdout
    assert "call outcome: agent_ended (agent support)" in result.stdout


def test_demo_of_an_agent_without_echo_says_what_to_add(tmp_path):
    agents = tmp_path / "agents.toml"
    agents.write_text(
        '[agents.only]\ndefault = true\nproviders = ["openai"]\ninstructions = "Hello."\n'
    )
    result = demo(tmp_path, "--agents", str(agents))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "agent 'only' lists no echo provider" in result.stderr
    assert "agents.only.providers" in result.stderr


def test_demo_of_a_broken_agents_file_lists_its_problems(tmp_path):
    agents = tmp_path / "agents.toml"
    agents.write_text('[agents.a]\ndefault = true\nproviders = ["echo"]\nbogus = 1\n')
    result = demo(tmp_path, "--agents", str(agents))
    assert result.returncode == 1
    assert "cannot be used" in result.stderr and "bogus" in result.stderr
    assert "Traceback" not in result.stderr


# -- the key presses and the dialed number, checked before anything runs ---------------------


@pytest.mark.parametrize(
    ("dtmf", "says"),
    [
        ("x@1", "'x@1': expected DIGIT@SECONDS, DIGIT one of 0-9 * #"),
        ("12@1", "'12@1': expected DIGIT@SECONDS, DIGIT one of 0-9 * #"),
        ("1", "'1': expected DIGIT@SECONDS, DIGIT one of 0-9 * #"),
        ("", "'': expected DIGIT@SECONDS, DIGIT one of 0-9 * #"),
        ("1@abc", "'1@abc': the time must be seconds from 0 to 600"),
        ("1@-1", "'1@-1': the time must be seconds from 0 to 600"),
        ("1@nan", "'1@nan': the time must be seconds from 0 to 600"),
        ("1@inf", "'1@inf': the time must be seconds from 0 to 600"),
        ("1@601", "'1@601': the time must be seconds from 0 to 600"),
        ("2@3,1@1", "'1@1': the presses must be in time order"),
    ],
)
@pytest.mark.parametrize("command", [["simulate", "call", "--wav", "x.wav"], ["demo"]])
def test_bad_key_presses_are_a_one_line_usage_error(capsys, command, dtmf, says):
    argv = [*command, "--dtmf", dtmf]
    if command == ["demo"]:
        argv += ["--agents", str(EXAMPLES)]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"voicegw: --dtmf: {says}\n"


@pytest.mark.parametrize("number", ["4155550199", "+0123456789", "+1 415 555 0199", "+1", "sip:a"])
def test_a_dialed_number_not_in_e164_is_a_usage_error(capsys, number):
    assert cli.main(["simulate", "call", "--wav", "x.wav", "--to", number]) == 2
    assert capsys.readouterr().err == (
        f"voicegw: --to: {number!r} is not an E.164 number (+ and 7 to 15 digits)\n"
    )


def test_keys_and_number_without_an_agents_file_are_a_usage_error(capsys):
    assert cli.main(["demo", "--dtmf", "1@1"]) == 2
    assert capsys.readouterr().err == "voicegw: --to and --dtmf need --agents FILE\n"


def test_presses_parse_in_time_order():
    assert parse_presses("1@1.5, 3@4,#@4,*@10") == (
        Press("1", 1.5),
        Press("3", 4.0),
        Press("#", 4.0),
        Press("*", 10.0),
    )
    assert parse_number("+14155550199") == "+14155550199"


def test_default_keys_call_each_tool_then_transfer_else_end_call():
    book = load_book(EXAMPLES, EXAMPLES.parent / "data")
    support, sales = book.profiles["support"], book.profiles["sales"]
    # support: lookup_order (1), transfer_call (2), end_call (3): the call ends transferred.
    assert default_presses(support) == (Press("1", 1.0), Press("2", 2.5))
    # sales: book_callback (1), end_call (2): no transfer table, so the agent hangs up.
    assert default_presses(sales) == (Press("1", 1.0), Press("2", 2.5))
    assert key_map(sales) == "1 book_callback, 2 end_call"


@pytest.mark.parametrize(
    ("form", "action", "destination"),
    [
        ({"Status": "completed"}, "hangup", None),
        (
            {"Twiml": "<Response><Dial><Number>+14155550123</Number></Dial></Response>"},
            "transfer",
            "+14155550123",
        ),
        (
            {"Twiml": "<Response><Dial><Sip>sip:a@b.example</Sip></Dial></Response>"},
            "transfer",
            "sip:a@b.example",
        ),
        ({"Twiml": "<Response><Dial>+14155550123</Dial></Response>"}, "transfer", "+14155550123"),
        ({"Twiml": "<Response><Dial"}, "transfer", None),  # not XML: no destination, no crash
        ({"Twiml": "<Response><Say>hi</Say></Response>"}, "update", None),
    ],
)
def test_twilio_call_updates_are_read_as_the_carrier_would(form, action, destination):
    command = CarrierCommand("twilio", "CA1", twilio_action(form), form)
    assert (command.action, command.destination) == (action, destination)
    expected = {
        "hangup": "hang-up requested",
        "transfer": f"transfer requested to {destination or '(no destination)'}",
        "update": "update requested",
    }[action]
    assert command.describe() == expected


def test_telnyx_transfer_names_its_destination():
    command = CarrierCommand("telnyx", "v3:x", "transfer", {"to": "sip:desk@pbx.example.com"})
    assert command.describe() == "transfer requested to sip:desk@pbx.example.com"
    assert CarrierCommand("telnyx", "v3:x", "transfer", {"to": 5}).destination is None
