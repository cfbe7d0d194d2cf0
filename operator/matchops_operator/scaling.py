"""How many workers a pipeline needs: a pure policy over what the broker reports.

Each poll the operator observes the queue, and `decide` turns that observation, the workers'
limits and what the previous polls learned (`History`, kept in the resource's status so a
restarted operator remembers it) into a replica count and the reason for it:

- Measure: while messages wait in the queue the workers are saturated, so what they complete
  per second is their capacity. The per-replica rate is smoothed across polls.
- Size: enough replicas to clear the backlog within `targetDrainSeconds` while keeping up with
  new messages; until a rate is measured, `targetBacklogPerReplica` messages per replica.
- Scale up at once (a small overshoot within `SCALE_UP_TOLERANCE` is tolerated, so a backlog
  hovering on a boundary does not add a worker every other poll).
- Scale down only when fewer replicas have sufficed for `scaleDownDelaySeconds` without a break,
  then one replica per poll; an idle queue ends at zero, and the first message brings one back.
- Always within `minReplicas`..`maxReplicas`; a changed limit applies at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from matchops_worker.durations import format_duration

# Weight of the newest throughput sample in the smoothed per-replica rate.
SMOOTHING = 0.3
# Scale up only when the backlog needs more than this fraction above the current replicas.
SCALE_UP_TOLERANCE = 0.1


@dataclass(frozen=True)
class Limits:
    """The autoscaling part of `spec.workers`."""

    min_replicas: int
    max_replicas: int
    target_backlog_per_replica: int
    target_drain_seconds: int
    scale_down_delay_seconds: int


@dataclass(frozen=True)
class Observation:
    """The queue at one poll; rates and unacked are None without the management API."""

    at: float
    ready: int
    consumers: int
    unacked: int | None = None
    publish_rate: float | None = None
    ack_rate: float | None = None

    @property
    def backlog(self) -> int:
        """Messages not yet stored: waiting, plus delivered and not acknowledged."""
        return self.ready + (self.unacked or 0)

    @property
    def idle(self) -> bool:
        return self.backlog == 0 and not self.publish_rate


@dataclass(frozen=True)
class History:
    """What earlier polls decided and measured."""

    replicas: int
    throughput_per_replica: float | None = None
    over_provisioned_since: float | None = None
    previous: Observation | None = None


@dataclass(frozen=True)
class Decision:
    """The replicas for this poll, the numbers behind them, and the history to keep."""

    replicas: int
    reason: str
    history: History


def decide(observation: Observation, limits: Limits, history: History) -> Decision:
    """Replicas for this poll, why, and what to remember for the next one."""
    throughput = measure(observation, history)
    current = history.replicas
    raw, basis = needed_replicas(observation, limits, throughput)
    wanted = math.ceil(raw)
    target = clamp(wanted, limits)
    memory = History(
        replicas=current,
        throughput_per_replica=throughput,
        over_provisioned_since=None,
        previous=observation,
    )

    if current < limits.min_replicas:
        return _scale(target, f"minReplicas is {limits.min_replicas}; {basis}", memory)
    if current > limits.max_replicas:
        return _scale(target, f"maxReplicas is {limits.max_replicas}; {basis}", memory)

    if wanted > current:
        if current > 0 and raw <= current * (1 + SCALE_UP_TOLERANCE):
            return Decision(current, f"{basis}; {current} within tolerance", memory)
        if target == current:
            return Decision(current, f"{basis}; at maxReplicas {limits.max_replicas}", memory)
        capped = f" (capped at maxReplicas {limits.max_replicas})" if target < wanted else ""
        return _scale(target, basis + capped, memory)

    if target >= current:
        return Decision(current, basis, memory)

    # Fewer replicas would do: only act once that has held for the whole delay.
    since = history.over_provisioned_since
    if since is None or since > observation.at:
        since = observation.at
    memory = replace(memory, over_provisioned_since=since)
    waited = round(observation.at - since)
    delay = f"scale-down delay {limits.scale_down_delay_seconds}s"
    if waited < limits.scale_down_delay_seconds:
        return Decision(
            current,
            f"{basis}; {target} would do, for {format_duration(waited)} ({delay})",
            memory,
        )
    # One step per poll; the delay is not restarted, so a long-idle pipeline steps down on
    # every poll until it reaches what the load needs.
    return Decision(
        current - 1,
        f"{basis}; {target} would do, for {format_duration(waited)} ({delay}), one step at a time",
        replace(memory, replicas=current - 1),
    )


def measure(observation: Observation, history: History) -> float | None:
    """The smoothed per-replica throughput, updated when this poll saw saturated workers."""
    sample = throughput_sample(observation, history.previous)
    known = history.throughput_per_replica
    if sample is None:
        return known
    if known is None:
        return sample
    return SMOOTHING * sample + (1 - SMOOTHING) * known


def throughput_sample(observation: Observation, previous: Observation | None) -> float | None:
    """Messages per second one consumer stored since the last poll, if that shows capacity.

    Only a poll that finds messages waiting says anything about capacity: with an empty queue
    the workers store what arrives, not what they could.
    """
    if observation.consumers == 0 or observation.ready == 0:
        return None
    if observation.ack_rate is not None:
        total = observation.ack_rate
    else:
        if previous is None or previous.ready == 0:
            return None
        elapsed = observation.at - previous.at
        if elapsed <= 0:
            return None
        drained = (previous.backlog - observation.backlog) / elapsed
        total = drained + (observation.publish_rate or 0.0)
    if total <= 0:
        return None
    return total / observation.consumers


def needed_replicas(
    observation: Observation, limits: Limits, throughput: float | None
) -> tuple[float, str]:
    """Replicas the load calls for (before limits and rounding), and the numbers behind them."""
    backlog = observation.backlog
    arriving = observation.publish_rate or 0.0
    if observation.idle:
        return 0, "queue idle"
    if throughput:
        # Clear what is queued within the target while keeping up with what arrives.
        per_second = backlog / limits.target_drain_seconds + arriving
        wanted = per_second / throughput
        basis = (
            f"backlog {_backlog(observation)}, ~{_rate(throughput)}/s per replica, "
            f"target drain {limits.target_drain_seconds}s"
        )
        if arriving:
            basis += f", {_rate(arriving)}/s arriving"
    else:
        wanted = backlog / limits.target_backlog_per_replica
        basis = (
            f"backlog {_backlog(observation)}, throughput not measured yet, "
            f"target {limits.target_backlog_per_replica} per replica"
        )
    # Any message waiting needs a worker, however fast the others would be.
    return max(wanted, 1.0), basis


def clamp(replicas: int, limits: Limits) -> int:
    return max(limits.min_replicas, min(limits.max_replicas, replicas))


def _scale(target: int, reason: str, history: History) -> Decision:
    return Decision(target, reason, replace(history, replicas=target))


def _backlog(observation: Observation) -> str:
    """The backlog in a reason, "1840 (ready 1800, unacked 40)"; without the management API
    unacked is not known, and the backlog is the ready messages alone."""
    if observation.unacked is None:
        return str(observation.backlog)
    return f"{observation.backlog} (ready {observation.ready}, unacked {observation.unacked})"


def _rate(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def hold(limits: Limits, history: History) -> Decision:
    """The decision when the queue could not be read: keep the replicas, within the limits."""
    target = clamp(history.replicas, limits)
    if target < history.replicas:
        reason = f"maxReplicas is {limits.max_replicas}; queue not observed"
    elif target > history.replicas:
        reason = f"minReplicas is {limits.min_replicas}; queue not observed"
    else:
        reason = "queue not observed; replicas kept"
    # Without figures, fewer replicas having sufficed is no longer known to be true.
    return Decision(target, reason, replace(history, replicas=target, over_provisioned_since=None))
