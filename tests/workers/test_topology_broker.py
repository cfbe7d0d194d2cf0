"""The topology on a real RabbitMQ: declaration, conflicts, retry delays, policies, Celery."""

import time
from urllib.parse import quote

import pika
import pytest
from celery import Celery
from matchops_devenv.broker_tools import Vhost
from matchops_devenv.rabbitmq import RabbitMQ
from matchops_worker.contract import CELERY_TASKS
from matchops_worker.topology import (
    Binding,
    TopologyConflict,
    TopologyRefused,
    build_topology,
    declare,
    unbind,
)

pytestmark = pytest.mark.integration


def test_declare_is_idempotent_and_creates_everything(vhost: Vhost) -> None:
    topology = build_topology("matches", retry_delays=["1s", "5s"])
    with vhost.channel() as channel:
        declare(channel, topology)
        declare(channel, topology)
    for queue in ("matches", "matches.retry.1s", "matches.retry.5s", "matches.dlq"):
        assert vhost.depth(queue) == 0
    vhost.publish("matches", "matches", [b"{}"])
    assert vhost.depth("matches") == 1


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_a_retry_queue_returns_messages_to_the_main_queue(vhost: Vhost, queue_type: str) -> None:
    topology = build_topology("matches", queue_type=queue_type, retry_delays=["1s"])
    with vhost.channel() as channel:
        declare(channel, topology)
    vhost.publish("", "matches.retry.1s", [b"later"])
    assert vhost.depth("matches.retry.1s") == 1
    assert vhost.depth("matches") == 0
    assert vhost.wait_for_depth("matches", 1, timeout=15) == 1
    (message,) = vhost.take("matches")
    assert message.body == b"later"


def test_inequivalent_queue_is_a_conflict_naming_the_queue(vhost: Vhost) -> None:
    with vhost.channel() as channel:
        declare(channel, build_topology("matches", queue_type="classic"))
    with vhost.channel() as channel, pytest.raises(TopologyConflict) as conflict:
        declare(channel, build_topology("matches", queue_type="quorum"))
    assert conflict.value.kind == "queue"
    assert conflict.value.name == "matches"
    assert "inequivalent arg" in conflict.value.reason


def test_exchange_of_another_type_is_a_conflict(vhost: Vhost) -> None:
    with vhost.channel() as channel:
        channel.exchange_declare("matches", exchange_type="fanout", durable=True)
    with vhost.channel() as channel, pytest.raises(TopologyConflict) as conflict:
        declare(channel, build_topology("matches"))
    assert (conflict.value.kind, conflict.value.name) == ("exchange", "matches")


@pytest.mark.parametrize(
    ("permissions", "action"),
    [
        (("^$", ".*", ".*"), "declare exchange matches"),
        # A retry queue dead-letters through the default exchange, which takes write on it.
        ((".*", "^$", ".*"), "declare queue matches.retry.10s"),
        # Binding takes write on the queue: here only on the default exchange and retry queues.
        (
            (".*", r"^(amq\.default|matches\..+)$", ".*"),
            "bind queue matches to exchange matches with routing key 'matches'",
        ),
    ],
    ids=["no-configure", "no-write", "no-write-on-the-queue"],
)
def test_a_refused_declaration_names_what_was_refused(
    rabbitmq: RabbitMQ,
    vhost: Vhost,
    vhost_user: str,
    permissions: tuple[str, str, str],
    action: str,
) -> None:
    limited = Vhost(vhost.name, rabbitmq.set_user(vhost_user, "secret", vhost.name, permissions))
    with limited.channel() as channel, pytest.raises(TopologyRefused) as refused:
        declare(channel, build_topology("matches"))
    assert refused.value.action == action
    assert refused.value.reply_code == 403
    assert f"refused for user '{vhost_user}'" in refused.value.reply_text
    # Code that handles the broker's refusals in general (the worker's reconnect loop) still does.
    assert isinstance(refused.value, pika.exceptions.ChannelClosedByBroker)


def test_unbind_removes_only_the_bindings_named(rabbitmq: RabbitMQ, vhost: Vhost) -> None:
    keys = ["matches", "matches.process", "u14"]
    with vhost.channel() as channel:
        declare(channel, build_topology("matches", routing_keys=keys))
        stale = [Binding("matches", "matches", "u14"), Binding("matches", "matches", "gone")]
        unbind(channel, stale)
        unbind(channel, stale)  # bindings already gone: no error
    with rabbitmq.management() as api:
        bindings = api.get(f"/bindings/{quote(vhost.name, safe='')}/e/matches/q/matches").json()
    assert {b["routing_key"] for b in bindings} == {"matches", "matches.process"}


def celery_app(vhost: Vhost) -> Celery:
    app = Celery("scraper", broker=vhost.url)
    app.conf.broker_connection_retry_on_startup = False
    return app


def test_celery_producers_keep_working_with_a_classic_queue(vhost: Vhost) -> None:
    with vhost.channel() as channel:
        declare(channel, build_topology("matches", queue_type="classic"))
    app = celery_app(vhost)
    app.send_task(CELERY_TASKS[0], args=[{"home_team": "A"}], queue="matches")
    app.close()
    (message,) = vhost.take("matches")
    assert message.headers["task"] == CELERY_TASKS[0]
    with vhost.channel() as channel:
        declare(channel, build_topology("matches", queue_type="classic"))


def test_celery_cannot_publish_to_a_quorum_queue(vhost: Vhost) -> None:
    with vhost.channel() as channel:
        declare(channel, build_topology("matches", queue_type="quorum"))
    app = celery_app(vhost)
    with pytest.raises(Exception, match="inequivalent arg"):
        app.send_task(CELERY_TASKS[0], args=[{}], queue="matches")
    app.close()


def put_policies(rabbitmq: RabbitMQ, vhost: Vhost, queue_type: str) -> None:
    topology = build_topology("matches", queue_type=queue_type, delivery_limit=2)
    with rabbitmq.management() as api:
        for policy in topology.policies:
            api.put(
                f"/policies/{quote(vhost.name, safe='')}/{quote(policy.name, safe='')}",
                json=policy.body(),
            ).raise_for_status()
    with vhost.channel() as channel:
        declare(channel, topology)


def wait_for_policy(rabbitmq: RabbitMQ, vhost: Vhost, queue: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if (rabbitmq.queue_info(vhost.name, queue) or {}).get("policy"):
            return
        time.sleep(0.2)
    raise AssertionError(f"policy not applied to {queue}")


def test_policy_dead_letters_rejected_messages_of_a_classic_queue(
    rabbitmq: RabbitMQ, vhost: Vhost
) -> None:
    put_policies(rabbitmq, vhost, "classic")
    wait_for_policy(rabbitmq, vhost, "matches")
    vhost.publish("matches", "matches", [b"poison"])
    with vhost.channel() as channel:
        method, _, _ = channel.basic_get("matches")
        assert method is not None
        channel.basic_reject(method.delivery_tag, requeue=False)
    assert vhost.wait_for_depth("matches.dlq", 1, timeout=10) == 1


def test_policy_delivery_limit_dead_letters_a_message_that_keeps_coming_back(
    rabbitmq: RabbitMQ, vhost: Vhost
) -> None:
    put_policies(rabbitmq, vhost, "quorum")
    wait_for_policy(rabbitmq, vhost, "matches")
    vhost.publish("matches", "matches", [b"crashes consumers"])
    with vhost.channel() as channel:
        for _ in range(3):
            method, _, _ = channel.basic_get("matches")
            if method is None:
                break
            channel.basic_nack(method.delivery_tag, requeue=True)
    assert vhost.wait_for_depth("matches.dlq", 1, timeout=10) == 1
    assert vhost.depth("matches") == 0


def test_persistent_messages_survive_a_broker_restart() -> None:
    with RabbitMQ() as broker:
        vhost = Vhost("/", broker.url())
        with vhost.channel() as channel:
            declare(channel, build_topology("matches"))
        vhost.publish(
            "matches",
            "matches",
            [b"kept"],
            pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
        )
        broker.stop()
        broker.start()
        assert vhost.depth("matches") == 1
