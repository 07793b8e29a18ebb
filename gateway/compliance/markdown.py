"""The compliance report as Markdown: a table per framework, then the evidence.

``render_markdown`` reads only the report data that ``build_report`` returns, so the JSON and
the Markdown say the same things.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

__all__ = ["render_markdown"]

FRAMEWORK_HEADINGS: Final = {
    "GDPR": "GDPR",
    "HIPAA": "HIPAA technical safeguards (45 CFR 164.312)",
    "SOC 2": "SOC 2 (CC6 logical access, CC7 system operations)",
}


def _cell(value: object) -> str:
    text = "-" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def _deleted(counts: Mapping[str, Any]) -> str:
    def n(count: int, noun: str) -> str:
        return f"{count} {noun}{'' if count == 1 else 's'}"

    return (
        f"{n(counts.get('calls', 0), 'call record')}, {n(counts.get('recordings', 0), 'recording')}"
        f", {n(counts.get('audit_events', 0), 'audit event')}"
    )


def _ms(value: object) -> str:
    return "-" if value is None else f"{value} ms"


def _controls(controls: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for c in controls:
        features = ", ".join(f"`{f['ref']}`" for f in c["features"])
        basis = "<br>".join(("✓ " if k["ok"] else "✗ ") + k["text"] for k in c["conditions"])
        rows.append(
            (c["reference"], c["title"], features, "yes" if c["enabled"] else "**no**", basis)
        )
    return _table(("control", "requirement", "implemented by", "enabled", "why"), rows)


def _run_text(run: Mapping[str, Any] | None) -> str:
    return "never" if run is None else f"{run['at']} ({run['outcome']})"


def _evidence(ev: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    dsr = ev["subject_requests"]
    out += [f"### Data-subject requests (last {dsr['window_days']} days)", ""]
    out += _table(
        ("request", "served", "failed", "latency p50", "latency max"),
        [
            (kind, r["served"], r["failed"], _ms(r["latency_p50_ms"]), _ms(r["latency_max_ms"]))
            for kind, r in ((k, dsr[k]) for k in ("export", "erase"))
        ],
    )

    trail = ev["audit_trail"]
    verified = trail["last_verification"]
    out += ["### Audit trail", ""]
    rows: list[tuple[object, object]] = [
        ("events appended", trail["events_appended"]),
        ("last verification", _run_text(verified)),
    ]
    if verified is not None:
        rows += [
            ("events verified", verified.get("events")),
            ("signed checkpoints verified", verified.get("signatures_verified")),
            ("events appended since", verified.get("events_since")),
        ]
        if verified.get("first_bad_seq") is not None:
            rows.append(("first broken link", f"{verified['first_bad_seq']}: {verified['reason']}"))
    if trail["write_failures_this_process"] is not None:
        rows.append(("write failures (this process)", trail["write_failures_this_process"]))
    out += _table(("evidence", "value"), rows)

    ret = ev["retention"]
    last = ret["last_run"]
    deleted = ret["deleted_in_window"]
    out += ["### Retention", ""]
    rows = [
        ("periods", f"call records and recordings {ret['call_records_days']:g} days, "
         f"audit events {ret['audit_events_days']:g} days"),
        ("sweeper's last pass", _run_text(last)),
    ]  # fmt: skip
    if last is not None and last["outcome"] == "success":
        rows.append(("deleted by that pass", _deleted(last)))
    rows.append((f"deleted in the last {ret['window_days']} days", _deleted(deleted)))
    out += _table(("evidence", "value"), rows)

    keys = ev["key_ages"]
    out += ["### Key ages", ""]
    if not keys["available"]:
        out += ["No key inventory in this report.", ""]
    else:
        out += _table(
            ("kind", "key", "status", "age", "rotation due in"),
            [
                (
                    k["kind"],
                    f"`{k['key_id']}`",
                    k["status"],
                    f"{k['age_days']} days"
                    + (" (since first seen)" if k["age_from"] == "first seen" else ""),
                    None
                    if k["rotation_due_in_days"] is None
                    else f"{k['rotation_due_in_days']} days",
                )
                for k in keys["keys"]
            ],
        )
        if keys["unavailable"]:
            out += [f"Could not be read: {', '.join(keys['unavailable'])}.", ""]

    rej = ev["webhook_rejections"]
    carriers = list(rej["by_carrier"])
    out += [f"### Webhook rejections by layer (last {rej['window_hours']} h, since {rej['since']})"]
    out += [""]
    out += _table(
        ("layer", *carriers, "total"),
        [
            (layer, *(rej["by_carrier"][c].get(layer, 0) for c in carriers), total)
            for layer, total in rej["by_layer"].items()
        ],
    )

    access = ev["access"]
    out += ["### Access", ""]
    out += _table(
        ("role", "active users", "usable API keys"),
        [(r, n, access["usable_api_keys"].get(r, 0)) for r, n in access["active_users"].items()],
    )
    return out


def _processing(p: Mapping[str, Any]) -> list[str]:
    ret = p["retention"]
    return [
        "## Record of processing (GDPR Art. 30)",
        "",
        *_table(
            ("record", "content"),
            [
                ("purpose", p["purpose"]),
                ("data subjects", ", ".join(p["data_subjects"])),
                ("personal data", "<br>".join(p["personal_data"])),
                ("recipients", "<br>".join(p["recipients"])),
                (
                    "retention",
                    f"call records {ret['call_records_days']:g} days, recordings "
                    f"{ret['recordings_days']:g} days, audit events {ret['audit_events_days']:g} "
                    "days",
                ),
                (
                    "storage",
                    f"{p['storage']['store']}, shared state {p['storage']['shared_state']}",
                ),
            ],
        ),
    ]


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report`` (from ``build_report``) as Markdown."""
    d = report["deployment"]
    out = [
        "# voicegw compliance evidence report",
        "",
        f"Generated {report['generated_at']} · {d['env']} · store {d['store']} · shared state "
        f"{d['shared_state']} · carriers {', '.join(d['carriers'])} · providers "
        f"{', '.join(d['providers'])}",
        "",
        *_table(
            ("framework", "controls", "enabled"),
            [(fw, s["controls"], s["enabled"]) for fw, s in report["summary"].items()],
        ),
    ]
    if report["attention"]:
        out += ["## Needs attention", ""]
        out += [f"- {_cell(text)}" for text in report["attention"]]
        out += [""]
    for framework, heading in FRAMEWORK_HEADINGS.items():
        items = [c for c in report["controls"] if c["framework"] == framework]
        if items:
            out += [f"## {heading}", "", *_controls(items)]
    out += ["## Evidence", "", *_evidence(report["evidence"])]
    out += _processing(report["processing"])
    return "\n".join(out).rstrip("\n") + "\n"
