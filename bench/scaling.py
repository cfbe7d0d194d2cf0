"""The autoscaler over a bursty day, against KEDA's queueLength formula and fixed replicas.

A day of messages is replayed second by second through a simple model of the workers, once per
way of choosing the replica count:

- matchops: the operator's policy (`matchops_operator.scaling.decide`), polled every 10 s,
  with the management API's figures (ready, unacked, publish and ack rates);
- matchops, AMQP only: the same policy without the management API (no managementSecretRef),
  seeing what KEDA sees: ready messages and consumers;
- KEDA: the RabbitMQ scaler in queueLength mode (ready messages), polled every 30 s for 0 <-> 1,
  then the HPA's 15 s loop with replicas = ceil(ready / target), its 10 % tolerance, its default
  scale-up limit (double or +4 per loop), its 300 s scale-down window, and KEDA's 300 s
  cooldown before returning to zero;
- fixed: two replicas all day, as the hand-deployed stack ran.

The day is quiet, then the 06:00 scraper publishes thousands of matches within a minute, a
trickle of live score updates follows during the day, a smaller 18:00 scrape, then quiet again.
Each replica stores a fixed number of messages per second once its pod is ready (it starts a
fixed time after it is requested) and holds up to `prefetch` messages unacknowledged.

Printed per policy: p95 and maximum message wait (publish to acknowledgement), replica-seconds
(pods running or starting, the cost), and the number of scale changes.
"""

from __future__ import annotations

import argparse
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from matchops_operator.scaling import History, Limits, Observation, decide

DAY = 24 * 3600


@dataclass(frozen=True)
class Model:
    """The workers and the day's load."""

    per_replica: float = 25.0  # messages stored per second by one ready replica
    startup: int = 20  # seconds from requesting a pod to it consuming
    prefetch: int = 200
    max_replicas: int = 10
    target_per_replica: int = 500  # matchops targetBacklogPerReplica = KEDA queueLength value
    target_drain: int = 60
    scale_down_delay: int = 300
    bursts: tuple[tuple[int, int, int], ...] = (
        (6 * 3600, 6000, 60),  # 06:00: 6000 matches within a minute
        (18 * 3600, 2500, 30),  # 18:00: a smaller scrape
    )
    trickle_every: int = 120  # a live score update every two minutes ...
    trickle_hours: tuple[int, int] = (9, 22)  # ... from 09:00 to 22:00

    def arrivals(self, second: int) -> int:
        """Messages published during `second` of the day."""
        count = 0
        for start, size, spread in self.bursts:
            if start <= second < start + spread:
                offset = second - start
                count += size * (offset + 1) // spread - size * offset // spread
        first, last = (hour * 3600 for hour in self.trickle_hours)
        if first <= second < last and (second - first) % self.trickle_every == 0:
            count += 1
        return count


@dataclass
class Pipeline:
    """Messages in flight and pods, advanced one second at a time."""

    model: Model
    fifo: deque[list[int]] = field(default_factory=deque)  # [publish second, count]
    pods: list[int] = field(default_factory=list)  # second each pod becomes ready
    waits: dict[int, int] = field(default_factory=dict)  # wait in seconds -> messages
    replica_seconds: int = 0
    changes: int = 0
    published_window: deque[int] = field(default_factory=deque)
    acked_window: deque[int] = field(default_factory=deque)

    @property
    def backlog(self) -> int:
        return sum(count for _, count in self.fifo)

    def ready_pods(self, now: int) -> int:
        return sum(1 for ready_at in self.pods if ready_at <= now)

    def unacked(self, now: int) -> int:
        return min(self.backlog, self.ready_pods(now) * self.model.prefetch)

    def rate(self, window: deque[int]) -> float:
        return sum(window) / len(window) if window else 0.0

    def scale(self, replicas: int, now: int) -> None:
        if replicas == len(self.pods):
            return
        self.changes += 1
        while len(self.pods) < replicas:
            self.pods.append(now + self.model.startup)
        # Pods still starting go first, as a ReplicaSet removes unready pods first.
        self.pods.sort()
        del self.pods[replicas:]

    def tick(self, now: int) -> None:
        published = self.model.arrivals(now)
        if published:
            self.fifo.append([now, published])
        capacity = int(self.ready_pods(now) * self.model.per_replica)
        acked = 0
        while capacity and self.fifo:
            head = self.fifo[0]
            taken = min(capacity, head[1])
            self.waits[now - head[0]] = self.waits.get(now - head[0], 0) + taken
            head[1] -= taken
            capacity -= taken
            acked += taken
            if head[1] == 0:
                self.fifo.popleft()
        for window, value in ((self.published_window, published), (self.acked_window, acked)):
            window.append(value)
            if len(window) > 10:  # the management API's rates: a short moving average
                window.popleft()
        self.replica_seconds += len(self.pods)

    def percentile(self, fraction: float) -> int:
        total = sum(self.waits.values())
        seen = 0
        for wait in sorted(self.waits):
            seen += self.waits[wait]
            if seen >= fraction * total:
                return wait
        return 0


Policy = Callable[[Pipeline, int], None]


def matchops_policy(model: Model, management: bool = True, poll: int = 10) -> Policy:
    limits = Limits(
        min_replicas=0,
        max_replicas=model.max_replicas,
        target_backlog_per_replica=model.target_per_replica,
        target_drain_seconds=model.target_drain,
        scale_down_delay_seconds=model.scale_down_delay,
    )
    history = History(replicas=0)

    def step(pipeline: Pipeline, now: int) -> None:
        nonlocal history
        if now % poll:
            return
        unacked = pipeline.unacked(now)
        observation = Observation(
            at=float(now), ready=pipeline.backlog - unacked, consumers=pipeline.ready_pods(now)
        )
        if management:
            observation = replace(
                observation,
                unacked=unacked,
                publish_rate=pipeline.rate(pipeline.published_window),
                ack_rate=pipeline.rate(pipeline.acked_window),
            )
        decision = decide(observation, limits, history)
        history = decision.history
        pipeline.scale(decision.replicas, now)

    return step


def keda_policy(
    model: Model, polling: int = 30, hpa_loop: int = 15, window: int = 300, cooldown: int = 300
) -> Policy:
    recommendations: deque[tuple[int, int]] = deque()
    last_active = -cooldown

    def step(pipeline: Pipeline, now: int) -> None:
        nonlocal last_active
        ready = pipeline.backlog - pipeline.unacked(now)  # the AMQP queue length
        current = len(pipeline.pods)
        if now % polling == 0:
            if ready > 0:
                last_active = now
                if current == 0:
                    pipeline.scale(1, now)
                    return
            elif current > 0 and now - last_active >= cooldown:
                recommendations.clear()
                pipeline.scale(0, now)
                return
        if current == 0 or now % hpa_loop:
            return
        desired = math.ceil(ready / model.target_per_replica)
        if abs(ready / (model.target_per_replica * current) - 1) <= 0.1:
            desired = current
        desired = max(1, min(model.max_replicas, desired))
        recommendations.append((now, desired))
        while recommendations and recommendations[0][0] <= now - window:
            recommendations.popleft()
        if desired < current:
            desired = min(current, max(value for _, value in recommendations))
        desired = min(desired, max(current * 2, current + 4), model.max_replicas)
        pipeline.scale(desired, now)

    return step


def fixed_policy(replicas: int) -> Policy:
    def step(pipeline: Pipeline, now: int) -> None:
        pipeline.scale(replicas, now)

    return step


@dataclass(frozen=True)
class Result:
    name: str
    p95: int
    worst: int
    replica_seconds: int
    changes: int
    left: int


def replay(name: str, model: Model, policy: Policy) -> Result:
    pipeline = Pipeline(model)
    for now in range(DAY):
        policy(pipeline, now)
        pipeline.tick(now)
    return Result(
        name,
        pipeline.percentile(0.95),
        max(pipeline.waits),
        pipeline.replica_seconds,
        pipeline.changes,
        pipeline.backlog,
    )


def results(model: Model) -> Iterator[Result]:
    yield replay("matchops", model, matchops_policy(model))
    yield replay(
        "matchops, AMQP only (no management API)", model, matchops_policy(model, management=False)
    )
    yield replay("KEDA queueLength", model, keda_policy(model))
    yield replay("fixed 2 replicas", model, fixed_policy(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-replica", type=float, default=Model.per_replica)
    parser.add_argument("--startup", type=int, default=Model.startup)
    args = parser.parse_args()
    model = Model(per_replica=args.per_replica, startup=args.startup)
    total = sum(model.arrivals(second) for second in range(DAY))
    print(
        f"Bursty day: {total} messages (06:00 scrape {model.bursts[0][1]}, 18:00 scrape "
        f"{model.bursts[1][1]}, a score update every {model.trickle_every}s "
        f"{model.trickle_hours[0]}:00-{model.trickle_hours[1]}:00); workers store "
        f"{model.per_replica:.0f}/s each, start in {model.startup}s, max {model.max_replicas}"
    )
    found = list(results(model))
    width = max(len(result.name) for result in found)
    header = (
        f"{'policy':<{width}} {'p95 wait':>9} {'max wait':>9} {'replica-seconds':>16} "
        f"{'scale changes':>14} {'left':>5}"
    )
    print(header)
    print("-" * len(header))
    for result in found:
        print(
            f"{result.name:<{width}} {result.p95:>8}s {result.worst:>8}s "
            f"{result.replica_seconds:>16} {result.changes:>14} {result.left:>5}"
        )


if __name__ == "__main__":
    main()
