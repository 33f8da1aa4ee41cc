"""Unit-test fixtures: ``harness``, the pipeline of tests/support/pipeline.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.pipeline import PipelineHarness


@pytest.fixture
def harness() -> Callable[..., PipelineHarness]:
    return PipelineHarness
