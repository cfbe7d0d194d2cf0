import logging

import pytest
from matchops_worker.config import (
    ConfigError,
    comma_list,
    load_config,
    load_migrate_config,
    load_producer_config,
)

REQUIRED = {
    "MATCHOPS_AMQP_URL": "amqp://u:p@rabbit:5672/%2F",
    "MATCHOPS_DATABASE_DSN": "postgresql://u:p@db/matches",
}


def test_defaults() -> None:
    config = load_config(REQUIRED)
    topology = config.topology
    assert (topology.queue, topology.exchange, topology.routing_keys) == (
        "matches",
        "matches",
        ("matches",),
    )
    assert topology.queue_type == "quorum"
    assert topology.retry_delays == (10.0, 60.0, 300.0)
    assert topology.dead_letter_queue == "matches.dlq"
    assert (config.prefetch, config.batch_size, config.batch_wait) == (200, 200, 0.2)
    assert config.batch_idle == 0.01
    assert config.statement_timeout == 30.0
    assert config.metrics_port == 9100
    assert config.logging_level == logging.INFO
    assert config.declare_topology is False


def test_every_variable() -> None:
    config = load_config(
        {
            **REQUIRED,
            "MATCHOPS_QUEUE": "u14",
            "MATCHOPS_EXCHANGE": "scrapes",
            "MATCHOPS_ROUTING_KEYS": "u14, u14.process ,",
            "MATCHOPS_QUEUE_TYPE": "Classic",
            "MATCHOPS_RETRY_DELAYS": "1s, 30s,2m",
            "MATCHOPS_DEAD_LETTER_QUEUE": "u14.dead",
            "MATCHOPS_PREFETCH": "500",
            "MATCHOPS_BATCH_SIZE": "250",
            "MATCHOPS_BATCH_WAIT": "1s",
            "MATCHOPS_BATCH_IDLE": "50ms",
            "MATCHOPS_STATEMENT_TIMEOUT": "1m30s",
            "MATCHOPS_METRICS_PORT": "9200",
            "MATCHOPS_LOG_LEVEL": "DEBUG",
            "MATCHOPS_DECLARE_TOPOLOGY": "true",
        }
    )
    topology = config.topology
    assert topology.exchange == "scrapes"
    assert topology.routing_keys == ("u14", "u14.process")
    assert topology.queue_type == "classic"
    assert topology.retry_queues == ("u14.retry.1s", "u14.retry.30s", "u14.retry.2m")
    assert topology.dead_letter_queue == "u14.dead"
    assert (config.prefetch, config.batch_size, config.batch_limit) == (500, 250, 250)
    assert config.batch_wait == 1.0
    assert config.batch_idle == 0.05
    assert config.statement_timeout == 90.0
    assert config.metrics_port == 9200
    assert config.logging_level == logging.DEBUG
    assert config.declare_topology is True
    assert config.notes() == []


def test_empty_variables_count_as_unset() -> None:
    config = load_config({**REQUIRED, "MATCHOPS_QUEUE": "", "MATCHOPS_RETRY_DELAYS": " "})
    assert config.topology.queue == "matches"
    assert config.topology.retry_delays == (10.0, 60.0, 300.0)


def test_batch_is_at_most_half_the_prefetch_and_says_so() -> None:
    config = load_config(REQUIRED)
    assert config.batch_limit == 100
    (note,) = config.notes()
    assert "at most 100 messages" in note
    assert load_config({**REQUIRED, "MATCHOPS_PREFETCH": "1"}).batch_limit == 1


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(
            {
                "MATCHOPS_QUEUE_TYPE": "stream",
                "MATCHOPS_RETRY_DELAYS": "10s,soon",
                "MATCHOPS_PREFETCH": "lots",
                "MATCHOPS_BATCH_SIZE": "0",
                "MATCHOPS_BATCH_WAIT": "200",
                "MATCHOPS_STATEMENT_TIMEOUT": "0s",
                "MATCHOPS_METRICS_PORT": "70000",
                "MATCHOPS_LOG_LEVEL": "loud",
                "MATCHOPS_DECLARE_TOPOLOGY": "maybe",
            }
        )
    message = str(error.value)
    for expected in (
        "MATCHOPS_AMQP_URL is required",
        "MATCHOPS_DATABASE_DSN is required",
        "MATCHOPS_QUEUE_TYPE='stream'",
        "MATCHOPS_RETRY_DELAYS: invalid duration 'soon'",
        "MATCHOPS_PREFETCH='lots' is not a whole number",
        "MATCHOPS_BATCH_SIZE=0 is outside 1..10000",
        "MATCHOPS_BATCH_WAIT: invalid duration '200'",
        "MATCHOPS_STATEMENT_TIMEOUT='0s' is shorter than 1ms",
        "MATCHOPS_METRICS_PORT=70000",
        "MATCHOPS_LOG_LEVEL='loud'",
        "MATCHOPS_DECLARE_TOPOLOGY='maybe'",
    ):
        assert expected in message


def test_invalid_topology_names_are_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="reserved prefix"):
        load_config({**REQUIRED, "MATCHOPS_QUEUE": "amq.matches"})


@pytest.mark.parametrize("level", ["root", "basic_format", "5", "warn"])
def test_a_log_level_is_one_of_the_names(level: str) -> None:
    # Names of other `logging` attributes, a number, an alias: none is a level here.
    with pytest.raises(ConfigError, match=f"MATCHOPS_LOG_LEVEL='{level}' is not one of"):
        load_config({**REQUIRED, "MATCHOPS_LOG_LEVEL": level})


def test_migrate_needs_only_the_database() -> None:
    config = load_migrate_config({"MATCHOPS_DATABASE_DSN": "postgresql://db/m"})
    assert (config.database_dsn, config.logging_level) == ("postgresql://db/m", logging.INFO)
    debug = {"MATCHOPS_DATABASE_DSN": "postgresql://db/m", "MATCHOPS_LOG_LEVEL": "debug"}
    assert load_migrate_config(debug).logging_level == logging.DEBUG
    with pytest.raises(ConfigError) as error:
        load_migrate_config({"MATCHOPS_LOG_LEVEL": "root"})
    assert str(error.value) == (
        "invalid migrate configuration: MATCHOPS_DATABASE_DSN is required; "
        "MATCHOPS_LOG_LEVEL='root' is not one of debug, info, warning, error"
    )


def test_the_producer_publishes_into_the_workers_topology() -> None:
    settings = {
        "MATCHOPS_QUEUE": "u14",
        "MATCHOPS_QUEUE_TYPE": "classic",
        "MATCHOPS_RETRY_DELAYS": "1s,2s",
        "MATCHOPS_ROUTING_KEYS": "u14.a,u14.b",
    }
    producer = load_producer_config(settings)
    assert producer.amqp_url is None
    assert producer.topology == load_config({**REQUIRED, **settings}).topology
    assert producer.routing_key == "u14.a"


def test_the_producer_defaults_to_the_workers_topology() -> None:
    assert load_producer_config({}).topology == load_config(REQUIRED).topology


def test_the_scraper_publishes_with_its_own_routing_key() -> None:
    producer = load_producer_config(
        {"MATCHOPS_ROUTING_KEYS": "a,b", "MATCHOPS_ROUTING_KEY": "b", "MATCHOPS_EXCHANGE": "x"}
    )
    assert (producer.topology.exchange, producer.routing_key) == ("x", "b")


def test_the_producer_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        load_producer_config({"MATCHOPS_QUEUE_TYPE": "stream", "MATCHOPS_RETRY_DELAYS": "soon"})
    message = str(error.value)
    assert message.startswith("invalid producer configuration: MATCHOPS_QUEUE_TYPE='stream'")
    assert "MATCHOPS_RETRY_DELAYS: invalid duration 'soon'" in message


def test_comma_lists_drop_spaces_and_empty_items() -> None:
    assert comma_list(" U14, U15 ,,") == ["U14", "U15"]
    assert comma_list(" ") == []
