"""The load test at CI size, 100 agents and 1,000 streams (tests/reliability/load.py; the 300-agent run whose figures
RELIABILITY.md publishes, and the full-size run, 1,000 agents and 10,000 streams, are manual commands of the same
code): simulated agents connect to one real hub up to its --max-agents, heartbeat, list the endpoints all at once,
hold a thousand app streams open through the hub at the same time and echo bytes through each; one agent more is
refused with "the hub is full" while the others keep being served. The real-agent version of the refusal (CLI
error, a slot freed by a leave) is
tests/integration/test_bad_input.py::test_a_full_hub_refuses_a_third_agent_and_keeps_serving_the_first_two.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from reliability.load import run_in_process
from reliability.traffic import Record
from support import start_hub

pytestmark = pytest.mark.slow

AGENTS = 100
STREAMS = 1000
"""The same phases and assertions as the 300-agent run (`load.py --agents 300 --streams 3000 --workers 0 --window
6`), a third of its size: that run took ~25 s of the suite's time, mostly enrolling agents."""


@pytest.mark.timeout(300)
def test_agents_streams_and_max_agents(tmp_path: Path, figures: Record) -> None:
    from bench.common import raise_nofile

    raise_nofile(1 << 14)
    # --heartbeat 2: each agent's liveness (a PING every 2 s, answered) shows several times in the 6 s window
    hub = start_hub(tmp_path, extra=["--max-agents", str(AGENTS), "--heartbeat", "2"])
    work = tmp_path / "agents"
    work.mkdir()
    fig = asyncio.run(run_in_process(hub.proc.pid, hub.permit, work, agents=AGENTS, streams=STREAMS, window=6.0))
    hub.proc.assert_alive()

    assert fig.agents == AGENTS
    assert fig.heartbeats_in_window >= AGENTS, (
        f"only {fig.heartbeats_in_window} liveness answers (PINGs, or heartbeats of an older hub) in "
        f"{fig.steady_window_s}s"
    )
    assert fig.list_burst_failed == 0 and fig.list_entries == [AGENTS], fig
    assert fig.streams_open_at_once == STREAMS, f"only {fig.streams_open_at_once} of {STREAMS} streams opened"
    assert fig.streams_open_failed == 0 and fig.streams_echo_failed == 0, fig.problems
    assert fig.streams_bytes_exact == STREAMS, fig.problems
    assert "hub is full" in fig.newcomer_refused and "--max-agents" in fig.newcomer_refused, fig.newcomer_refused
    assert fig.after_refusal_list_failed == 0
    assert fig.beat_errors == 0 and fig.lost == 0, fig.problems
    unexpected = {k: v for k, v in fig.problems.items() if "hub is full" not in k}
    assert not unexpected, unexpected

    figures(f"{AGENTS} agents: all online after", fig.connect_seconds, "s")
    figures(f"{AGENTS} agents: hub RSS idle -> online", fig.online_rss_mib, f"MiB (idle {fig.idle_rss_mib:.1f})")
    figures(f"{AGENTS} agents heartbeating: hub CPU", fig.steady_cpu_percent, "%")
    figures(f"{AGENTS} agents list at once: all answered after", fig.list_burst_seconds, "s")
    figures(f"{STREAMS} streams: all open at once after", fig.streams_open_seconds, "s")
    figures(f"{STREAMS} streams open: hub RSS", fig.streams_rss_mib, "MiB")
    figures(f"{STREAMS} streams: hub CPU to open them", fig.streams_open_cpu_seconds, "s")
    figures(f"{STREAMS} streams: hub CPU to echo 1 KiB on each and close", fig.streams_echo_cpu_seconds, "s")
