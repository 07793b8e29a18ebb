"""The README's simulator commands, run as written against a real ``voicegw serve``.

The command lines are read out of README.md's ``sh`` blocks (so the README cannot drift from
what works): the ``voicegw serve`` line that sets ``VOICEGW_TELNYX_API_URL``, and every
``voicegw simulate call`` line (those of the outbound simulation are run by
``tests/cli/test_demo_outbound.py``). Each runs as a subprocess in a fresh directory holding the
README's relative paths (``.venv/bin/voicegw``, ``tests/data``), so the gateway and the
simulator share ``./.voicegw`` as a user's two terminals do. The only changes: the documented
ports (the gateway's 8000, the simulated Call Control API's 8089) become free ones, given as
``--port``/``--url`` and ``VOICEGW_PUBLIC_URL``, so the test cannot collide with a gateway
already running on the machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from gateway.cli.main import TELNYX_API_PORT
from gateway.media.audio import read_wav
from providers.events import PCMU_8K
from tests.conftest import UNIT

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
GATEWAY_PORT = 8000  # the documented default of `voicegw serve` and `simulate --url`


def sh_lines(text: str) -> list[str]:
    """Every command line inside the README's ```sh blocks (comments dropped)."""
    lines: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            command = line.split(" #", 1)[0].strip()
            if command:
                lines.append(command)
    return lines


def outbound(line: str) -> bool:
    """A line of the README's outbound simulation (``tests/cli/test_demo_outbound.py``)."""
    return "outbound" in line or "--role dialer" in line


def readme_commands() -> tuple[str, list[str]]:
    """(the serve line for the simulator, the simulate lines) from README.md, the outbound
    simulation's left out."""
    lines = [ln for ln in sh_lines(README.read_text()) if not outbound(ln)]
    serves = [ln for ln in lines if "voicegw serve" in ln and "VOICEGW_TELNYX_API_URL" in ln]
    simulates = [ln for ln in lines if "voicegw simulate call" in ln]
    assert len(serves) == 1, f"README: expected one simulator `voicegw serve` line, got {serves}"
    return serves[0], simulates


def split(line: str) -> tuple[dict[str, str], list[str]]:
    """A shell command line's leading ``NAME=value`` assignments and its argv."""
    words = shlex.split(line)
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return env, words


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def user_dir(tmp_path: Path) -> Path:
    """A directory laid out like the repository for the README's relative paths."""
    home = tmp_path / "home"
    (home / ".venv").mkdir(parents=True)
    (home / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
    (home / "tests").mkdir()
    (home / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    return home


def base_env(port: int) -> dict[str, str]:
    """A user's shell: nothing of this test run's VOICEGW_* settings, the gateway's URL."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, "VOICEGW_PUBLIC_URL": f"http://127.0.0.1:{port}"}


@contextlib.contextmanager
def running(argv: list[str], cwd: Path, env: dict[str, str], port: int) -> Iterator[None]:
    """``argv`` (a ``voicegw serve``) as a subprocess until it answers ``/readyz``; stopped
    with SIGTERM on exit. Its output goes to ``serve.log`` beside ``cwd``, which must show no
    traceback."""
    log = cwd.parent / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20 * UNIT
        while True:
            assert proc.poll() is None, f"voicegw serve exited:\n{log.read_text()}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=UNIT).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"voicegw serve did not start:\n{log.read_text()}"
            time.sleep(0.05)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20 * UNIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()


def simulate(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60 * UNIT, check=False
    )


def test_readme_names_both_carriers_with_matching_ports():
    serve_line, simulate_lines = readme_commands()
    env, argv = split(serve_line)
    assert env["VOICEGW_TELNYX_API_URL"] == f"http://127.0.0.1:{TELNYX_API_PORT}"
    assert argv[-1] == "serve"
    carriers = [split(line)[1][split(line)[1].index("--carrier") + 1] for line in simulate_lines]
    assert sorted(carriers) == ["telnyx", "twilio"]


def test_readme_simulator_commands_run_end_to_end(tmp_path):
    serve_line, simulate_lines = readme_commands()
    port, api_port = free_port(), free_port()
    moved = str(TELNYX_API_PORT), str(api_port)
    home = user_dir(tmp_path)
    env = base_env(port)
    serve_env, serve_argv = split(serve_line.replace(*moved))
    with running([*serve_argv, "--port", str(port)], home, {**env, **serve_env}, port):
        for line in simulate_lines:
            sim_env, argv = split(line.replace(*moved))
            result = simulate(
                [*argv, "--url", f"http://127.0.0.1:{port}"], home, {**env, **sim_env}
            )
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            assert "result: ok" in result.stdout
            assert "Traceback" not in result.stderr
            if "--out" in argv:
                fmt, audio = read_wav(home / argv[argv.index("--out") + 1])
                assert fmt == PCMU_8K
                assert audio


def test_telnyx_simulation_against_a_gateway_not_pointed_at_it_says_what_to_set(tmp_path):
    """The README's serve command without its two variables: the gateway never calls the
    simulated Call Control API; the simulator says which variables to set (one line, exit 1)."""
    serve_line, simulate_lines = readme_commands()
    (telnyx,) = [line for line in simulate_lines if "telnyx" in line]
    port, api_port = free_port(), free_port()
    home = user_dir(tmp_path)
    env = base_env(port)
    _, serve_argv = split(serve_line)
    with running([*serve_argv, "--port", str(port)], home, env, port):
        _, argv = split(telnyx.replace(str(TELNYX_API_PORT), str(api_port)))
        result = simulate([*argv, "--url", f"http://127.0.0.1:{port}", "--fast"], home, env)
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"voicegw: the gateway did not call the simulated Call Control API at "
        f"http://127.0.0.1:{api_port}: start `voicegw serve` with "
        f"VOICEGW_TELNYX_API_URL=http://127.0.0.1:{api_port} VOICEGW_TELNYX_API_KEY=dev-local\n"
    )
