"""The RabbitMQ and PostgreSQL launchers: private, restartable, and leaving nothing behind."""

import os
import time
from pathlib import Path

import pika
import psycopg
import pytest
from matchops_devenv import statedir
from matchops_devenv.postgres import PostgreSQL
from matchops_devenv.rabbitmq import RabbitMQ


def processes_in(directory: Path) -> list[int]:
    """Pids whose working directory is inside `directory`."""
    marker = str(directory.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "cwd").startswith(marker):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_claimed_directories_of_dead_owners_are_swept(tmp_path: Path) -> None:
    live = statedir.claim("live", root=tmp_path)
    dead = tmp_path / "dead-x"
    dead.mkdir()
    (dead / statedir.OWNER_FILE).write_text("999999999 1")
    assert statedir.sweep(tmp_path) == [dead]
    assert live.exists()
    assert not dead.exists()


@pytest.mark.integration
def test_postgres_restarts_on_its_data_and_leaves_nothing_behind() -> None:
    server = PostgreSQL(fsync=False)
    directory = server.dir
    try:
        server.start()
        if os.geteuid() == 0:
            assert directory.joinpath("data").owner() == "postgres"
        dsn = server.create_database("kept")
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE t (n int)")
            conn.execute("INSERT INTO t VALUES (42)")
        server.stop()
        assert not server.running()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=2)
        server.start()
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT n FROM t").fetchone() == (42,)
    finally:
        server.close()
    assert processes_in(directory) == []
    assert not directory.exists()


@pytest.mark.integration
def test_rabbitmq_has_its_own_ports_restarts_on_its_data_and_leaves_nothing_behind() -> None:
    broker = RabbitMQ()
    directory = broker.dir
    ports = {broker.port, broker.management_port, broker.dist_port, broker.epmd_port}
    assert len(ports) == 4
    try:
        broker.start()
        vhost_url = broker.create_vhost("kept")
        connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
        channel = connection.channel()
        channel.queue_declare("q", durable=True)
        channel.basic_publish(
            "", "q", b"m", pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        )
        connection.close()
        broker.stop()
        assert not broker.running()
        broker.start()
        connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
        assert connection.channel().queue_declare("q", passive=True).method.message_count == 1
        connection.close()
    finally:
        broker.close()
    assert processes_in(directory) == []
    assert not directory.exists()


@pytest.mark.integration
def test_a_crashed_run_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    server = PostgreSQL(fsync=False)
    try:
        server.start()
        process = server._server.process
        assert process is not None
        # Pretend the owner died: its pid file and processes remain, its owner file lies.
        (server.dir / statedir.OWNER_FILE).write_text("999999999 1")
        statedir.sweep(server.dir.parent)
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is not None
        assert not server.dir.exists()
    finally:
        if server.running():
            server.stop()
        statedir.release(server.dir)
