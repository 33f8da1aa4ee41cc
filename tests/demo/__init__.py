"""Tests of the demo (scripts/demo.sh): its settings, rules, receiver and timeline."""
