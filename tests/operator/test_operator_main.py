"""Operator settings from flags and environment, and the kopf settings made from them."""

from __future__ import annotations

import logging

import pytest
from matchops_operator.main import FINALIZER, QuietPolls, kopf_settings, parse_args


def test_defaults_watch_every_namespace() -> None:
    settings, _ = parse_args([], env={})
    assert settings.namespaces == ()
    assert settings.poll_interval == 10.0
    assert settings.worker_image == ""
    assert settings.image_pull_policy is None
    assert settings.liveness_port == 8080
    assert settings.standalone is False


def test_environment_configures_the_operator() -> None:
    env = {
        "MATCHOPS_WATCH_NAMESPACES": "ingest, staging",
        "MATCHOPS_POLL_INTERVAL": "2s",
        "MATCHOPS_OPERATOR_IMAGE": "matchops:1.2.0",
        "MATCHOPS_IMAGE_PULL_POLICY": "Never",
        "MATCHOPS_LIVENESS_PORT": "0",
        "MATCHOPS_STANDALONE": "true",
        "MATCHOPS_RETRY_MAX_DELAY": "30s",
    }
    settings, _ = parse_args([], env=env)
    assert settings.namespaces == ("ingest", "staging")
    assert settings.poll_interval == 2.0
    assert settings.worker_image == "matchops:1.2.0"
    assert settings.image_pull_policy == "Never"
    assert settings.liveness_port is None
    assert settings.standalone is True
    assert settings.retry_max_delay == 30.0


def test_flags_override_the_environment() -> None:
    settings, _ = parse_args(
        ["-n", "a", "--namespace", "b", "--poll-interval", "500ms", "--no-standalone"],
        env={"MATCHOPS_WATCH_NAMESPACES": "c", "MATCHOPS_STANDALONE": "true"},
    )
    assert settings.namespaces == ("a", "b")
    assert settings.poll_interval == 0.5
    assert settings.standalone is False


def test_a_bad_duration_is_refused_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--poll-interval", "10"], env={})
    assert "write 10s for seconds" in capsys.readouterr().err


def test_backoff_doubles_up_to_the_maximum() -> None:
    settings, _ = parse_args([], env={"MATCHOPS_RETRY_MAX_DELAY": "1m"})
    assert [settings.backoff(n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_kopf_keeps_its_state_under_our_names_and_posts_no_events_of_its_own() -> None:
    settings, _ = parse_args(["-n", "ingest", "--standalone"], env={})
    configured = kopf_settings(settings)
    assert configured.persistence.finalizer == FINALIZER == "matchops.dev/finalizer"
    assert configured.posting.enabled is False
    assert configured.peering.standalone is True
    assert configured.peering.clusterwide is False
    # A deletion arriving during a poll is not held for kopf's default minute.
    assert configured.background.cancellation_polling <= 1.0


def test_listed_namespaces_are_served_without_scanning_the_cluster() -> None:
    listed, _ = parse_args(["-n", "ingest", "-n", "staging"], env={})
    assert kopf_settings(listed).scanning.disabled is True
    pattern, _ = parse_args(["-n", "ingest-*"], env={})
    assert kopf_settings(pattern).scanning.disabled is False
    everywhere, _ = parse_args([], env={})
    assert kopf_settings(everywhere).scanning.disabled is False
    assert kopf_settings(everywhere).peering.clusterwide is True


def test_peering_is_optional_unless_standalone() -> None:
    peered, _ = parse_args([], env={"MATCHOPS_PEERING_NAME": "ops"})
    configured = kopf_settings(peered)
    assert configured.peering.name == "ops"
    assert configured.peering.standalone is False
    assert configured.peering.mandatory is False


@pytest.mark.parametrize(
    ("message", "logged"),
    [
        ("Timer 'poll' succeeded.", False),
        ("Timer 'poll' failed temporarily: broker unreachable", True),
        ("Handler 'reconcile' succeeded.", True),
    ],
)
def test_only_successful_polls_are_left_out_of_the_log(message: str, logged: bool) -> None:
    record = logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, message, None, None)
    assert QuietPolls().filter(record) is logged
