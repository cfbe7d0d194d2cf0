"""The scaling policy, rule by rule, with no I/O."""

from __future__ import annotations

import pytest
from matchops_operator.scaling import (
    SMOOTHING,
    History,
    Limits,
    Observation,
    decide,
    hold,
    throughput_sample,
)

LIMITS = Limits(
    min_replicas=0,
    max_replicas=10,
    target_backlog_per_replica=500,
    target_drain_seconds=60,
    scale_down_delay_seconds=300,
)


def observe(at: float, ready: int, consumers: int = 0, **more: float) -> Observation:
    return Observation(at=at, ready=ready, consumers=consumers, **more)  # type: ignore[arg-type]


def limits(**changes: int) -> Limits:
    values = {**LIMITS.__dict__, **changes}
    return Limits(**values)


def test_fallback_sizes_by_backlog_per_replica_until_throughput_is_measured() -> None:
    decision = decide(observe(100, ready=1840), LIMITS, History(replicas=0))
    assert decision.replicas == 4  # ceil(1840 / 500)
    assert decision.reason == "backlog 1840, throughput not measured yet, target 500 per replica"
    assert decision.history.replicas == 4


def test_first_message_brings_a_worker_back_from_zero() -> None:
    decision = decide(
        observe(100, ready=1), LIMITS, History(replicas=0, throughput_per_replica=460)
    )
    assert decision.replicas == 1


def test_measured_throughput_sizes_for_the_target_drain_time() -> None:
    # 110400 messages in 60 s is 1840/s; at 460/s per replica that is 4 replicas.
    history = History(replicas=1, throughput_per_replica=460.0)
    decision = decide(observe(100, ready=110400, consumers=0), LIMITS, history)
    assert decision.replicas == 4
    assert decision.reason == "backlog 110400, ~460/s per replica, target drain 60s"


def test_unacked_messages_count_as_backlog() -> None:
    decision = decide(observe(100, ready=0, unacked=1200), LIMITS, History(replicas=1))
    assert decision.replicas == 3  # ceil(1200 / 500), although nothing is ready
    assert decision.reason.startswith("backlog 1200 (ready 0, unacked 1200), ")


def test_arrival_rate_needs_capacity_even_with_an_empty_queue() -> None:
    history = History(replicas=1, throughput_per_replica=40.0)
    decision = decide(observe(100, ready=0, publish_rate=100.0, unacked=0), LIMITS, history)
    assert decision.replicas == 3  # 100/s arriving, 40/s per replica
    assert "100/s arriving" in decision.reason


def test_throughput_is_measured_from_the_ack_rate_while_messages_wait() -> None:
    sample = throughput_sample(observe(10, ready=500, consumers=4, ack_rate=1840.0), None)
    assert sample == 460.0


def test_throughput_is_measured_from_the_drain_without_the_management_api() -> None:
    previous = observe(0, ready=10000, consumers=2)
    # 3000 drained in 10 s by 2 consumers.
    assert throughput_sample(observe(10, ready=7000, consumers=2), previous) == 150.0


def test_publishing_during_the_interval_adds_to_the_drain() -> None:
    previous = observe(0, ready=10000, consumers=2)
    now = observe(10, ready=8000, consumers=2, publish_rate=100.0)
    assert throughput_sample(now, previous) == 150.0  # 200/s drained net + 100/s published


@pytest.mark.parametrize(
    ("now", "previous"),
    [
        (observe(10, ready=0, consumers=2, ack_rate=50.0), None),  # idle: not capacity
        (observe(10, ready=100, consumers=0, ack_rate=50.0), None),  # nobody consuming
        (observe(10, ready=100, consumers=2), None),  # nothing to compare with
        (observe(10, ready=100, consumers=2), observe(0, ready=0, consumers=2)),
        (observe(10, ready=900, consumers=2), observe(0, ready=500, consumers=2)),  # growing
    ],
)
def test_no_throughput_sample_when_the_poll_shows_no_capacity(
    now: Observation, previous: Observation | None
) -> None:
    assert throughput_sample(now, previous) is None


def test_throughput_is_smoothed_across_polls() -> None:
    history = History(replicas=4, throughput_per_replica=400.0)
    decision = decide(observe(10, ready=1000, consumers=4, ack_rate=2400.0), LIMITS, history)
    expected = SMOOTHING * 600.0 + (1 - SMOOTHING) * 400.0
    assert decision.history.throughput_per_replica == pytest.approx(expected)


def test_throughput_survives_an_idle_poll() -> None:
    history = History(replicas=2, throughput_per_replica=300.0)
    decision = decide(observe(10, ready=0, consumers=2, ack_rate=5.0), LIMITS, history)
    assert decision.history.throughput_per_replica == 300.0


def test_scale_up_is_capped_at_max_replicas() -> None:
    decision = decide(observe(0, ready=100000), LIMITS, History(replicas=2))
    assert decision.replicas == 10
    assert decision.reason.endswith("(capped at maxReplicas 10)")


def test_no_change_at_max_replicas_however_large_the_backlog() -> None:
    decision = decide(observe(0, ready=100000), LIMITS, History(replicas=10))
    assert decision.replicas == 10
    assert "at maxReplicas 10" in decision.reason


def test_min_replicas_applies_at_once() -> None:
    decision = decide(observe(0, ready=0), limits(min_replicas=2), History(replicas=0))
    assert decision.replicas == 2
    assert decision.reason.startswith("minReplicas is 2")


def test_idle_pipeline_stays_at_min_replicas() -> None:
    history = History(replicas=2, over_provisioned_since=0)
    decision = decide(observe(10_000, ready=0), limits(min_replicas=2), history)
    assert decision.replicas == 2


def test_lowered_max_replicas_applies_at_once() -> None:
    decision = decide(observe(0, ready=100000), limits(max_replicas=3), History(replicas=8))
    assert decision.replicas == 3
    assert decision.reason.startswith("maxReplicas is 3")


def test_scale_up_is_immediate_even_while_waiting_to_scale_down() -> None:
    history = History(replicas=2, over_provisioned_since=0)
    decision = decide(observe(100, ready=5000), LIMITS, history)
    assert decision.replicas == 10
    assert decision.history.over_provisioned_since is None


def test_small_overshoot_is_tolerated() -> None:
    # 2100 needs 4.2 replicas: within 10 % of 4, no fifth worker.
    decision = decide(observe(0, ready=2100), LIMITS, History(replicas=4))
    assert decision.replicas == 4
    # 2300 needs 4.6: beyond the tolerance.
    assert decide(observe(0, ready=2300), LIMITS, History(replicas=4)).replicas == 5


def test_scale_down_waits_for_the_delay() -> None:
    first = decide(observe(1000, ready=0), LIMITS, History(replicas=3))
    assert first.replicas == 3
    assert first.history.over_provisioned_since == 1000
    assert "0 would do, for 0s (scale-down delay 300s)" in first.reason
    later = decide(observe(1299, ready=0), LIMITS, first.history)
    assert later.replicas == 3
    assert later.history.over_provisioned_since == 1000


def test_scale_down_after_the_delay_removes_one_replica() -> None:
    history = History(replicas=3, over_provisioned_since=1000)
    decision = decide(observe(1300, ready=0), LIMITS, history)
    assert decision.replicas == 2
    assert decision.reason == (
        "queue idle; 0 would do, for 5m (scale-down delay 300s), one step at a time"
    )


def test_scale_down_goes_one_step_per_poll() -> None:
    history = History(replicas=5, over_provisioned_since=0)
    seen = []
    for poll in range(7):
        decision = decide(observe(400 + 10 * poll, ready=0), LIMITS, history)
        history = decision.history
        seen.append(decision.replicas)
    assert seen == [4, 3, 2, 1, 0, 0, 0]


def test_scale_down_stops_where_the_load_needs_it() -> None:
    history = History(replicas=5, over_provisioned_since=0)
    for poll in range(5):
        history = decide(observe(400 + 10 * poll, ready=900), LIMITS, history).history
    assert history.replicas == 2  # ceil(900 / 500)


def test_a_busy_poll_restarts_the_scale_down_delay() -> None:
    history = History(replicas=3, over_provisioned_since=0)
    busy = decide(observe(250, ready=1500), LIMITS, history)
    assert busy.replicas == 3
    assert busy.history.over_provisioned_since is None
    quiet = decide(observe(260, ready=0), LIMITS, busy.history)
    assert quiet.replicas == 3
    assert quiet.history.over_provisioned_since == 260


def test_idle_queue_scales_to_zero_and_back_on_the_first_message() -> None:
    history = History(replicas=1, over_provisioned_since=0, throughput_per_replica=300.0)
    zero = decide(observe(300, ready=0, unacked=0, publish_rate=0.0), LIMITS, history)
    assert zero.replicas == 0
    back = decide(observe(310, ready=1, unacked=0, publish_rate=0.2), LIMITS, zero.history)
    assert back.replicas == 1


def test_a_backlog_hovering_on_a_boundary_does_not_flap() -> None:
    history = History(replicas=0)
    changes = 0
    for poll in range(120):  # 20 minutes of 10 s polls
        backlog = 1450 if poll % 2 else 950  # needs 3, then 2, then 3...
        decision = decide(observe(10 * poll, ready=backlog), LIMITS, history)
        changes += decision.replicas != history.replicas
        history = decision.history
    assert changes == 2  # 0 -> 2 on the first poll, 2 -> 3 on the second, then steady
    assert history.replicas == 3


def test_spiky_load_scales_up_fast_and_down_slowly() -> None:
    history = History(replicas=1)
    replicas = []
    for poll in range(60):
        backlog = 4000 if poll % 20 == 0 else 0  # a spike every 200 s
        decision = decide(observe(10 * poll, ready=backlog), LIMITS, history)
        history = decision.history
        replicas.append(decision.replicas)
    assert replicas[0] == 8
    # Spikes come more often than the 300 s delay: no scale down between them.
    assert min(replicas) == 8


def test_hold_keeps_replicas_without_an_observation() -> None:
    decision = hold(LIMITS, History(replicas=4, over_provisioned_since=10))
    assert decision.replicas == 4
    assert decision.history.over_provisioned_since is None
    assert decision.reason == "queue not observed; replicas kept"


def test_hold_applies_changed_limits() -> None:
    assert hold(limits(max_replicas=2), History(replicas=4)).replicas == 2
    assert hold(limits(min_replicas=3), History(replicas=1)).replicas == 3


def test_max_replicas_zero_pauses_consumption() -> None:
    decision = decide(observe(0, ready=5000), limits(max_replicas=0), History(replicas=0))
    assert decision.replicas == 0
