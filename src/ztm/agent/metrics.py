"""The agent's Prometheus exposition (`GET /api/metrics`): hub links (failovers and moves between hubs, the time
streams waited for the hub's flow-control credit, and how many wait now: a stalled stream shows there), per-peer
traffic, app counters (connections by path, `ztm.apps.paths`, as one metric with a `path` label), and the end-to-end
layer's handshakes, streams, failures by reason and caller mismatches (`ztm.agent.e2e`), and the access policy's
version, decisions and the live connections it closed, by app (`ztm.agent.gate`)."""

from __future__ import annotations

from ztm.agent.service import Agent
from ztm.apps.paths import PREFIX as PATH_PREFIX


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(agent: Agent) -> str:
    lines = [
        "# HELP ztm_agent_hub_connected 1 when the mesh's hub connection is up",
        "# TYPE ztm_agent_hub_connected gauge",
    ]
    traffic: list[str] = []
    failures: list[str] = [
        "# TYPE ztm_agent_hub_connect_failures_total counter",
        "# HELP ztm_agent_hub_failovers_total sessions re-established after the hub connection was lost",
        "# TYPE ztm_agent_hub_failovers_total counter",
        "# HELP ztm_agent_hub_moves_total voluntary make-before-break moves to a better hub (own zone, better tier)",
        "# TYPE ztm_agent_hub_moves_total counter",
    ]
    credit: list[str] = [
        "# HELP ztm_agent_hub_credit_wait_seconds_total time streams waited for the hub's flow-control credit",
        "# TYPE ztm_agent_hub_credit_wait_seconds_total counter",
        "# HELP ztm_agent_hub_streams_waiting_for_credit streams waiting for the hub's flow-control credit now",
        "# TYPE ztm_agent_hub_streams_waiting_for_credit gauge",
    ]
    apps: list[str] = []
    by_path: list[str] = [
        "# HELP ztm_agent_app_streams_by_path connections an app opened or accepted, by path (relay, direct, lan, "
        "punched)",
        "# TYPE ztm_agent_app_streams_by_path counter",
    ]
    e2e: list[str] = [
        "# HELP ztm_agent_e2e_handshakes_total end-to-end sessions made, by role",
        "# TYPE ztm_agent_e2e_handshakes_total counter",
        "# HELP ztm_agent_e2e_streams_total end-to-end streams opened, by role",
        "# TYPE ztm_agent_e2e_streams_total counter",
        "# HELP ztm_agent_e2e_failures_total end-to-end handshakes and streams that failed, by reason",
        "# TYPE ztm_agent_e2e_failures_total counter",
        "# HELP ztm_agent_e2e_caller_mismatch_total streams whose caller's certificate differed from the hub's claim",
        "# TYPE ztm_agent_e2e_caller_mismatch_total counter",
        "# HELP ztm_agent_e2e_resumed_total streams opened on an existing end-to-end session (no handshake)",
        "# TYPE ztm_agent_e2e_resumed_total counter",
        "# HELP ztm_agent_e2e_first_in_event_total streams whose opening began from the hub's stream event",
        "# TYPE ztm_agent_e2e_first_in_event_total counter",
        "# HELP ztm_agent_e2e_unknown_session_total streams whose RESUME named a session the responder did not hold",
        "# TYPE ztm_agent_e2e_unknown_session_total counter",
        "# HELP ztm_agent_e2e_early_streams_total openings that sent early data (DATA before the peer's answer)",
        "# TYPE ztm_agent_e2e_early_streams_total counter",
        "# HELP ztm_agent_e2e_early_bytes_total bytes of early data sent before the peer's answer",
        "# TYPE ztm_agent_e2e_early_bytes_total counter",
        "# HELP ztm_agent_e2e_early_held_bytes_total early data held unread until the app accepted, then delivered",
        "# TYPE ztm_agent_e2e_early_held_bytes_total counter",
        "# HELP ztm_agent_e2e_early_dropped_bytes_total early data dropped unread because the app refused",
        "# TYPE ztm_agent_e2e_early_dropped_bytes_total counter",
    ]
    policy: list[str] = [
        "# HELP ztm_agent_policy_version the version of the mesh's access policy enforced here (0: none is set)",
        "# TYPE ztm_agent_policy_version gauge",
        "# HELP ztm_agent_policy_allowed_total streams and requests the access policy allowed at this endpoint, by app",
        "# TYPE ztm_agent_policy_allowed_total counter",
        "# HELP ztm_agent_policy_denied_total streams and requests the access policy refused at this endpoint, by app",
        "# TYPE ztm_agent_policy_denied_total counter",
        "# HELP ztm_agent_policy_closed_total live connections and sessions closed because a new policy denied them",
        "# TYPE ztm_agent_policy_closed_total counter",
    ]
    for mesh, session in sorted(agent.meshes.items()):
        m = _label(mesh)
        gate = session.gate
        policy.append(f'ztm_agent_policy_version{{mesh="{m}"}} {gate.version}')
        for key, value in sorted(gate.counters.items()):
            outcome, _, kind = key.partition(":")
            policy.append(f'ztm_agent_policy_{outcome}_total{{mesh="{m}",app="{_label(kind)}"}} {value}')
        lines.append(f'ztm_agent_hub_connected{{mesh="{m}"}} {1 if session.link.status == "online" else 0}')
        failures.append(f'ztm_agent_hub_connect_failures_total{{mesh="{m}"}} {session.link.connect_failures}')
        failures.append(f'ztm_agent_hub_failovers_total{{mesh="{m}"}} {session.link.failovers}')
        failures.append(f'ztm_agent_hub_moves_total{{mesh="{m}"}} {session.link.moves}')
        conn = session.link.conn
        waited = session.link.credit_wait + (conn.credit_wait if conn is not None else 0.0)
        waiting = conn.waiting_for_credit if conn is not None else 0
        credit.append(f'ztm_agent_hub_credit_wait_seconds_total{{mesh="{m}"}} {waited:.3f}')
        credit.append(f'ztm_agent_hub_streams_waiting_for_credit{{mesh="{m}"}} {waiting}')
        for ep_id, t in sorted(session.traffic.items()):
            labels = f'mesh="{m}",peer="{_label(t.name)}",peer_id="{_label(ep_id)}"'
            traffic += [
                f"ztm_agent_peer_sent_bytes_total{{{labels}}} {t.sent}",
                f"ztm_agent_peer_received_bytes_total{{{labels}}} {t.received}",
                f"ztm_agent_peer_streams{{{labels}}} {t.streams}",
            ]
        counts = session.e2e.counters
        for role in ("initiator", "responder"):
            e2e.append(f'ztm_agent_e2e_handshakes_total{{mesh="{m}",role="{role}"}} {counts[f"handshakes:{role}"]}')
            e2e.append(f'ztm_agent_e2e_streams_total{{mesh="{m}",role="{role}"}} {counts[f"streams:{role}"]}')
        for key, value in sorted(counts.items()):
            if key.startswith("failures:"):
                e2e.append(f'ztm_agent_e2e_failures_total{{mesh="{m}",reason="{_label(key[9:])}"}} {value}')
        e2e.append(f'ztm_agent_e2e_caller_mismatch_total{{mesh="{m}"}} {counts["caller_mismatch"]}')
        e2e.append(f'ztm_agent_e2e_resumed_total{{mesh="{m}"}} {counts["resumed"]}')
        e2e.append(f'ztm_agent_e2e_first_in_event_total{{mesh="{m}"}} {counts["first_in_event"]}')
        for key in ("unknown_session", "early_streams", "early_bytes", "early_held_bytes", "early_dropped_bytes"):
            e2e.append(f'ztm_agent_e2e_{key}_total{{mesh="{m}"}} {counts[key]}')
        for metric, value in sorted(session.direct.counters.items()):
            apps.append(f'ztm_agent_direct_{metric}_total{{mesh="{m}"}} {value}')
        for app in session.apps.values():
            for key, value in sorted(app.counters.items()):
                name, _, metric = key.rpartition(":")
                if metric.startswith(PATH_PREFIX):
                    path = _label(metric[len(PATH_PREFIX) :])
                    labels = f'mesh="{m}",app="{app.name}",name="{_label(name)}",path="{path}"'
                    by_path.append(f"ztm_agent_app_streams_by_path{{{labels}}} {value}")
                    continue
                apps.append(f'ztm_agent_app_{metric}{{mesh="{m}",app="{app.name}",name="{_label(name)}"}} {value}')
    lines += ["# TYPE ztm_agent_peer_sent_bytes_total counter", "# TYPE ztm_agent_peer_received_bytes_total counter"]
    lines += ["# TYPE ztm_agent_peer_streams gauge", *traffic, *apps, *by_path, *failures, *credit, *e2e, *policy]
    return "\n".join(lines) + "\n"
