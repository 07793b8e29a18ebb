"""The multi-replica suite's fixture (three ``voicegw serve`` processes, started once per
module), the replicas' logs attached to every failure report, and the figures each test
measured printed at the end of the run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator

import pytest
import pytest_asyncio

from tests.cluster.harness import FIGURES, Cluster, start_cluster
from tests.e2e.processes import tail


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    async with start_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    running = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and isinstance(running, Cluster):
        for replica in running.replicas:
            report.sections.append((f"replica {replica.name} log (end)", tail(replica.log)))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("multi-replica figures")
    for test, figures in FIGURES:
        terminalreporter.write_line(f"{test}: {figures}")
