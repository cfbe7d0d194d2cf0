"""The `matchops` producer command line against a real RabbitMQ."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from matchops_devenv.broker_tools import Vhost
from matchops_worker.contract import CELERY_TASKS, MatchReport, parse_message
from matchops_worker.topology import build_topology, declare

from .reports import MATCH


def matchops(
    *args: str,
    url: str | None = None,
    stdin: bytes | None = None,
    settings: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("matchops")
    env = {"PATH": "/usr/bin:/bin", "MATCHOPS_QUEUE_TYPE": "classic", **(settings or {})}
    if url:
        env["MATCHOPS_AMQP_URL"] = url
    return subprocess.run(
        [str(script), *args],
        env=env,
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_sample_season_writes_valid_json_lines() -> None:
    result = matchops("sample-season", "--teams", "4", "--invalid", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    parsed = [parse_message(line.encode()) for line in lines]
    assert sum(isinstance(p, MatchReport) for p in parsed) == 12 + 6
    assert len(lines) == 12 + 6 + 2


def test_schema_command_prints_the_published_schema() -> None:
    result = matchops("schema")
    published = Path(__file__).parents[2] / "workers" / "schema" / "match-message.schema.json"
    assert json.loads(result.stdout) == json.loads(published.read_text())


def test_publish_without_a_broker_url_explains(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(MATCH) + "\n")
    result = matchops("publish", str(path))
    assert result.returncode == 1
    assert "MATCHOPS_AMQP_URL" in result.stderr


def test_an_invalid_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(MATCH) + "\n")
    settings = {"MATCHOPS_QUEUE_TYPE": "stream"}
    result = matchops("publish", str(path), url="amqp://localhost:1/", settings=settings)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "matchops: invalid producer configuration: "
        "MATCHOPS_QUEUE_TYPE='stream' is not one of quorum, classic"
    ]
    # Commands that do not publish do not read the broker settings.
    assert matchops("schema", settings=settings).returncode == 0


@pytest.mark.integration
def test_publish_refuses_a_file_with_invalid_messages(vhost: Vhost, tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(MATCH) + "\n{broken\n" + json.dumps({**MATCH, "season": ""}) + "\n")
    with vhost.channel() as channel:
        declare(channel, build_topology("matches", queue_type="classic"))
    result = matchops("publish", "--declare", str(path), url=vhost.url)
    assert result.returncode == 2
    assert "message 2: invalid-json" in result.stderr
    assert "message 3: contract" in result.stderr
    assert "nothing was published" in result.stderr
    assert vhost.depth("matches") == 0

    forced = matchops("publish", "--declare", "--allow-invalid", str(path), url=vhost.url)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["published"] == 3
    bodies = [m.body for m in vhost.take("matches")]
    assert bodies[1] == b"{broken"


@pytest.mark.integration
def test_publish_a_json_array_persistently_with_a_timestamp(vhost: Vhost, tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps([MATCH, {**MATCH, "match_date": "2025-10-11"}]))
    result = matchops("publish", "--declare", str(path), url=vhost.url)
    assert result.returncode == 0, result.stderr
    messages = vhost.take("matches")
    assert [json.loads(m.body)["match_date"] for m in messages] == ["2025-10-04", "2025-10-11"]
    for message in messages:
        assert message.properties.delivery_mode == 2
        assert message.properties.timestamp is not None
        assert message.properties.message_id


@pytest.mark.integration
def test_publish_as_celery_tasks(vhost: Vhost) -> None:
    result = matchops(
        "publish",
        "--declare",
        "--celery",
        "--task",
        CELERY_TASKS[1],
        "-",
        url=vhost.url,
        stdin=json.dumps(MATCH).encode(),
    )
    assert result.returncode == 0, result.stderr
    (message,) = vhost.take("matches")
    assert message.headers["task"] == CELERY_TASKS[1]
    parsed = parse_message(
        message.body,
        message.properties.content_type,
        message.properties.content_encoding,
        message.headers,
    )
    assert isinstance(parsed, MatchReport)
    assert parsed.home_team == MATCH["home_team"]


@pytest.mark.integration
def test_sample_season_publishes_everything(vhost: Vhost) -> None:
    result = matchops(
        "sample-season", "--publish", "--declare", "--teams", "6", "--invalid", "3", url=vhost.url
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["published"] == 30 + 15 + 3
    assert vhost.depth("matches") == summary["published"]


@pytest.mark.integration
def test_publish_to_an_exchange_without_the_queue_explains(vhost: Vhost, tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(MATCH) + "\n")
    with vhost.channel() as channel:
        channel.exchange_declare("orphans", exchange_type="direct", durable=True)
    result = matchops("publish", "--exchange", "orphans", str(path), url=vhost.url)
    assert result.returncode == 1
    assert "routes 'matches' to no queue" in result.stderr


@pytest.mark.integration
def test_publishes_where_the_operator_tells_its_scraper(vhost: Vhost) -> None:
    # The scraper CronJob's environment: exchange, queue and the one routing key to use.
    topology = build_topology(
        "u14", exchange="mlsnext", routing_keys=["mlsnext.u14"], queue_type="classic"
    )
    with vhost.channel() as channel:
        declare(channel, topology)
    settings = {
        "MATCHOPS_EXCHANGE": "mlsnext",
        "MATCHOPS_QUEUE": "u14",
        "MATCHOPS_ROUTING_KEY": "mlsnext.u14",
    }
    result = matchops(
        "sample-season", "--publish", "--teams", "4", url=vhost.url, settings=settings
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["exchange"], summary["routing_key"]) == ("mlsnext", "mlsnext.u14")
    assert vhost.depth("u14") == summary["published"] == 12 + 6
