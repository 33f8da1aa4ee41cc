"""``celery-vitals doctor``: checks a live cluster for the mistakes that blind an exporter
and the configuration traps that bite in production.

look.py gathers what the doctor sees, checks.py turns it into findings.py's Findings,
report.py is the command that prints them; prometheus.py checks the Prometheus side.
"""

from __future__ import annotations

from celery_vitals.doctor.checks import CHECKS, diagnose
from celery_vitals.doctor.findings import FAIL, OK, STATUSES, WARN, Finding, names_of
from celery_vitals.doctor.look import (
    ExporterView,
    Observation,
    WorkerView,
    http_get,
    http_url,
    look,
    parse_registered,
    scrape,
)
from celery_vitals.doctor.report import command, exit_code, text

__all__ = [
    "CHECKS",
    "FAIL",
    "OK",
    "STATUSES",
    "WARN",
    "ExporterView",
    "Finding",
    "Observation",
    "WorkerView",
    "command",
    "diagnose",
    "exit_code",
    "http_get",
    "http_url",
    "look",
    "names_of",
    "parse_registered",
    "scrape",
    "text",
]
