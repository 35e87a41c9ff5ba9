"""Fixtures of the Slack end-to-end tests (test_slack_commands, test_slack_approvals), loaded
as a pytest plugin by tests/conftest.py: a fake Slack Web API server and a factory of running
bots whose every message is validated and searched for secrets afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from core.config import Settings
from tests.support.fake_slack import FakeSlack
from tests.support.slack_requests import SIGNING_SECRET, Harness, SlackApps, fake_slack
from tests.support.stores import SECRET_KEY

SlackFactory = Callable[..., Harness]


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with fake_slack() as server:
        yield server


@pytest.fixture
def secrets() -> list[str]:
    """Values that must never appear in anything sent to Slack (a test may add more)."""
    return [SECRET_KEY, SIGNING_SECRET]


@pytest.fixture
def start_app(
    fake: FakeSlack, make_settings: Callable[..., Settings], secrets: list[str]
) -> Iterator[SlackFactory]:
    """start_app(settings=None, progress_interval=0.2, **setting_overrides) → a running bot.
    Afterwards every message and view it sent is validated and searched for the secrets."""
    apps = SlackApps(fake, make_settings, secrets)
    yield apps.start
    apps.close()
