"""kopf handlers: thin adapters from kopf's causes to the Reconciler.

- create / resume / spec update: reconcile; a failure that keeps the queue from being read
  (missing Secret, unreachable broker, refused credentials) is retried with backoff.
- a timer per resource: poll the backlog, scale, and repair drift of the topology and children.

A new spec is tried at once; the same spec again (a poll, a retry) only once the backoff of its
last failure has passed, whichever of them comes first.
- delete: honour `deletionPolicy` (Delete removes the queues) behind a finalizer; what was
  kept for the resource is dropped once it is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kopf

from matchops_operator.config import OperatorSettings
from matchops_operator.reconciler import Outcome, Reconciler
from matchops_operator.spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)


# The timer that polls each resource; kopf names it in its log lines.
POLL = "poll"


def register(
    registry: kopf.OperatorRegistry,
    reconciler: Reconciler,
    settings: OperatorSettings,
    login: Callable[[], kopf.ConnectionInfo],
) -> None:
    """Register the MatchIngestion handlers in `registry`, and how kopf logs in."""

    @kopf.on.login(registry=registry)
    def credentials(**_: Any) -> kopf.ConnectionInfo:
        return login()

    @kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile", field="spec", registry=registry)
    async def reconcile(body: kopf.Body, **_: Any) -> None:
        outcome = await reconciler.reconcile(body)
        for problem in outcome.problems:
            log.warning(
                "%s/%s: %s: %s",
                body.metadata.namespace,
                body.metadata.name,
                problem.reason,
                problem.message,
            )
        _retry_later(outcome)

    @kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        id=POLL,
        interval=settings.poll_interval,
        sharp=False,
        registry=registry,
    )
    async def poll(body: kopf.Body, **_: Any) -> None:
        await reconciler.reconcile(body)

    @kopf.on.delete(GROUP, VERSION, PLURAL, id="delete", registry=registry)
    async def delete(body: kopf.Body, **_: Any) -> None:
        outcome = await reconciler.delete(body)
        _retry_later(outcome)
        log.info("%s/%s: %s", body.metadata.namespace, body.metadata.name, outcome.summary)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def gone(event: kopf.RawEvent, uid: str, **_: Any) -> None:
        # Once its finalizer is released and it is removed; until then kopf may run the
        # deletion again, and what the first run recorded keeps it from repeating its Events.
        if event["type"] == "DELETED":
            reconciler.forget(uid)

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        await reconciler.close()


def _retry_later(outcome: Outcome) -> None:
    """kopf retries the handler after the Outcome's backoff, if it has one."""
    if outcome.retry_after is not None:
        raise kopf.TemporaryError(outcome.summary, delay=outcome.retry_after)
