"""Compliance evidence: which GDPR, HIPAA and SOC 2 controls this deployment implements,
whether each is enabled here, and live evidence that they operate.

    deployment.py  the facts of this deployment, from Settings and the store
    controls.py    the control catalogue: each control's features and enabling conditions
    evidence.py    data-subject requests, audit verification and retention, from the store
    rejections.py  webhook rejections per hour and layer, counted off the request path
    report.py      build_report: everything above as JSON-ready data
    markdown.py    render_markdown: the same report as tables
    sources.py     the report of a running gateway, or of a configuration and its store
    cli.py         ``voicegw compliance report``

``GET /api/v1/compliance/report`` (``gateway.operators.api``) serves the same report.
"""

from gateway.compliance.markdown import render_markdown
from gateway.compliance.report import REPORT_FORMAT, build_report
from gateway.compliance.sources import report_of_runtime, report_of_settings

__all__ = [
    "REPORT_FORMAT",
    "build_report",
    "render_markdown",
    "report_of_runtime",
    "report_of_settings",
]
