"""``voicegw demo --outbound`` and ``voicegw simulate call --outbound``: the gateway places a
call through ``POST /api/v1/calls``, the simulator answers it as Twilio or Telnyx, and the
call's events arrive at a receiver that verifies each signature with ``standardwebhooks``.

The demo runs as a real subprocess, as a user types it; the simulator runs against a real
``voicegw serve`` subprocess with a dialer key made by ``voicegw apikeys create``; the
receiver and the argument checks run in process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from telnyx.types.call_dial_response import CallDialResponse
from twilio.rest.api.v2010.account.call import CallInstance

from gateway.cli import main as cli
from gateway.cli.carrier_api import telnyx_dial_answer, twilio_call_resource
from gateway.cli.demo_outbound import CALLEE, CALLER_ID, EventsReceiver
from gateway.cli.main import TELNYX_API_PORT
from security.secret import Secret
from security.standard_webhooks import Signer, new_secret
from tests.cli.test_simulate_readme import (
    README,
    ROOT,
    base_env,
    free_port,
    outbound,
    running,
    sh_lines,
    split,
    user_dir,
)
from tests.conftest import UNIT

VOICEGW = Path(sys.executable).parent / "voicegw"
WAV = Path(__file__).resolve().parents[1] / "data" / "caller-8k-ulaw.wav"
EVENT_LINE = re.compile(r"event (call\.\w+)\s+webhook-id (evt_\S+)\s+signature verified")
# A source tree under test given on PYTHONPATH (a worktree) reaches the subprocesses too.
SOURCE = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}


def run(tmp_path: Path, *argv: str, env: dict[str, str] | None = None, stdin: str = ""):
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(
        [str(VOICEGW), *argv],
        env={"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path / "tmp"), **SOURCE, **(env or {})},
        cwd=tmp_path,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60 * UNIT,
        check=False,
    )


@pytest.mark.parametrize("carrier", ["twilio", "telnyx"])
def test_demo_places_a_call_and_shows_its_verified_events(tmp_path, carrier):
    result = run(tmp_path, "demo", "--outbound", "--carrier", carrier, "--wav", str(WAV))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"simulated outbound {carrier} call" in out and "result: ok" in out
    assert "POST /api/v1/calls to +1********23 (agent reminders) 201 call_" in out
    if carrier == "twilio":
        assert "carrier REST API: Calls.json (To, From, Twiml, ...) ok" in out
        assert re.search(r"status callback answered: in-progress \(signed\)\s+200", out)
    else:
        assert "carrier REST API: /v2/calls (connection_id, to, from, stream_url, ...) ok" in out
        assert re.search(r"call\.answered webhook \(signed\)\s+200", out)
    assert "media WebSocket upgrade                      accepted" in out
    # The events, as the receiver verified them: one id each, in the call's order.
    events = EVENT_LINE.findall(out)
    assert [t for t, _ in events] == ["call.started", "call.answered", "call.ended"]
    assert len({i for _, i in events}) == 3
    assert "0 refused" in out
    # Numbers are shown masked, never in full.
    for number in (CALLEE, CALLER_ID):
        assert number[2:] not in out + result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "tmp").iterdir()) == []  # its temporary data directory is gone


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["demo", "--outbound", "--agents", "a.toml"], "--outbound runs its own agent"),
        (["demo", "--outbound", "--dtmf", "1@1"], "--outbound runs its own agent"),
        (["simulate", "call", "--wav", "x", "--from", "+15550100009"], "--from needs --outbound"),
        (["simulate", "call", "--wav", "x", "--machine-detection"], "--machine-detection needs"),
        (
            ["simulate", "call", "--wav", "x.wav", "--outbound", "--agent", "a"],
            "--outbound needs --from NUMBER, --agent NAME and --api-key-file FILE",
        ),
        (
            [
                "simulate",
                "call",
                "--wav",
                "x.wav",
                "--outbound",
                "--agent",
                "a",
                "--from",
                "5550100009",
                "--api-key-file",
                "k",
            ],
            "--from: '5550100009' is not an E.164 number",
        ),
        (
            [
                "simulate",
                "call",
                "--wav",
                "x.wav",
                "--outbound",
                "--agent",
                "a",
                "--from",
                "+15550100009",
                "--api-key-file",
                "/nonexistent/key",
            ],
            "--api-key-file: cannot read /nonexistent/key",
        ),
    ],
)
def test_outbound_options_are_checked_before_anything_runs(capsys, argv, says):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("voicegw: ") and says in err and err.count("\n") == 1


def test_the_simulators_answers_parse_as_the_carriers_sdks_read_them():
    resource = twilio_call_resource("AC" + "0" * 32, "CA" + "1" * 32, {"To": "+1555"}, "queued")
    call = CallInstance(None, resource, "AC" + "0" * 32)
    assert (call.sid, call.status, call.direction) == ("CA" + "1" * 32, "queued", "outbound-api")
    answer = CallDialResponse.model_validate(telnyx_dial_answer("v3:abc"))
    assert answer.data is not None and answer.data.call_control_id == "v3:abc"


async def test_the_events_receiver_verifies_each_signature():
    secret = new_secret()
    lines: list[str] = []
    receiver = EventsReceiver(secret, show=lines.append)
    signer = Signer([Secret(secret)])
    body = b'{"type": "call.started", "id": "evt_1", "data": {"call_id": "call_1"}}'
    transport = httpx.ASGITransport(app=receiver.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as http:
        good = signer.headers("evt_1", body)
        assert (await http.post("/events", content=body, headers=good)).status_code == 204
        assert (await http.post("/events", content=body, headers=good)).status_code == 204
        forged = dict(good, **{"webhook-signature": "v1,AAAA"})
        assert (await http.post("/events", content=body, headers=forged)).status_code == 400
        other = Signer([Secret(new_secret())]).headers("evt_2", body)
        assert (await http.post("/events", content=body, headers=other)).status_code == 400
    assert receiver.types() == ["call.started"] and receiver.ids() == ["evt_1"]
    assert receiver.refused == 2
    assert "signature verified" in lines[0] and "(again: already received)" in lines[1]
    assert lines[2:] == ["  event refused: its signature does not verify"] * 2


def readme_outbound() -> tuple[str, str, list[str]]:
    """The README's outbound simulation: (the key line, the serve line, the simulate lines)."""
    lines = [ln for ln in sh_lines(README.read_text()) if outbound(ln)]
    (key,) = [ln for ln in lines if " apikeys create " in ln]
    (serve,) = [ln for ln in lines if ln.endswith("voicegw serve")]
    return key, serve, [ln for ln in lines if "voicegw simulate call --outbound" in ln]


def test_readme_simulates_both_carriers_placing_calls():
    _, serve, simulates = readme_outbound()
    env, _ = split(serve)
    assert (
        env["VOICEGW_TWILIO_API_URL"]
        == env["VOICEGW_TELNYX_API_URL"]
        == (f"http://127.0.0.1:{TELNYX_API_PORT}")
    )
    carriers = sorted(split(ln)[1][split(ln)[1].index("--carrier") + 1] for ln in simulates)
    assert carriers == ["telnyx", "twilio"]


def test_readme_outbound_simulation_runs_as_written(tmp_path):
    """As a user runs it from the README: `voicegw apikeys create` for the key, `voicegw
    serve` pointed at the simulator's carrier API, then each `voicegw simulate call
    --outbound` in the same directory. Only the ports change (free ones)."""
    key_line, serve_line, simulate_lines = readme_outbound()
    port, api_port = free_port(), free_port()
    moved = str(TELNYX_API_PORT), str(api_port)
    home = user_dir(tmp_path)
    (home / "examples").symlink_to(ROOT / "examples")
    env = {**base_env(port), **SOURCE}
    key_argv = split(key_line)[1]
    assert key_argv[-2] == ">"
    made = subprocess.run(
        key_argv[:-2],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=True,
    )
    (home / key_argv[-1]).write_text(made.stdout)
    serve_env, serve_argv = split(serve_line.replace(*moved))
    with running([*serve_argv, "--port", str(port)], home, {**env, **serve_env}, port):
        for line in simulate_lines:
            argv = [*split(line.replace(*moved))[1], "--url", f"http://127.0.0.1:{port}"]
            result = subprocess.run(
                [*argv, "--api-port", str(api_port), "--fast"],
                cwd=home,
                env=env,
                capture_output=True,
                text=True,
                timeout=60 * UNIT,
                check=False,
            )
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            assert "result: ok" in result.stdout and "201 call_" in result.stdout
            assert CALLEE[2:] not in result.stdout and "Traceback" not in result.stderr
        # A key the gateway does not know: the refusal is in the report, nothing is dialled.
        argv[argv.index("--api-key-file") + 1] = "-"
        wrong_key = subprocess.run(
            [*argv, "--api-port", str(api_port)],
            cwd=home,
            env=env,
            input="vgk_nope_nope\n",
            capture_output=True,
            text=True,
            timeout=60 * UNIT,
            check=False,
        )
    assert wrong_key.returncode == 1, wrong_key.stdout + wrong_key.stderr
    assert "POST /api/v1/calls to +1********23 (agent reminders) 401" in wrong_key.stdout
    assert "media WebSocket" not in wrong_key.stdout


def test_simulate_outbound_says_where_to_point_the_gateway(tmp_path):
    """A gateway whose carrier API is elsewhere: one line naming the variable to set."""
    home = tmp_path / "home"
    home.mkdir()
    agents = home / "agents.toml"
    agents.write_text(
        f'[agents.r]\ndefault = true\nproviders = ["echo"]\ncaller_ids = ["{CALLER_ID}"]\n'
    )
    port, api_port, elsewhere = free_port(), free_port(), free_port()
    env = {**base_env(port), **SOURCE}
    made = subprocess.run(
        [str(VOICEGW), "apikeys", "create", "--name", "sim", "--role", "dialer"],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
        check=True,
    )
    serve_env = {
        **env,
        "VOICEGW_AGENTS_FILE": str(agents),
        "VOICEGW_TWILIO_ACCOUNT_SID": "AC" + "0123456789abcdef" * 2,
        "VOICEGW_TWILIO_API_URL": f"http://127.0.0.1:{elsewhere}",
        "VOICEGW_CARRIER_REST_TIMEOUT_S": "1",
    }
    with running([str(VOICEGW), "serve", "--port", str(port)], home, serve_env, port):
        result = subprocess.run(
            [
                str(VOICEGW),
                "simulate",
                "call",
                "--outbound",
                "--wav",
                str(WAV),
                "--url",
                f"http://127.0.0.1:{port}",
                "--api-port",
                str(api_port),
                "--from",
                CALLER_ID,
                "--agent",
                "r",
                "--api-key-file",
                "-",
            ],
            cwd=home,
            env=env,
            input=made.stdout,
            capture_output=True,
            text=True,
            timeout=60 * UNIT,
            check=False,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == (
        "voicegw: the gateway did not place the call through the simulated twilio API at "
        f"http://127.0.0.1:{api_port}: start `voicegw serve` with "
        f"VOICEGW_TWILIO_API_URL=http://127.0.0.1:{api_port}\n"
    )
