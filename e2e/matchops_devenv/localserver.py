"""The lifecycle the environment's private servers (PostgreSQL, RabbitMQ) have in common.

Each runs its main program as a `procs.Service` in a state directory claimed from `statedir`:
`stop()` and `start()` keep the data, `close()` stops the server and removes the directory, and
a `with` block starts the server and closes it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Self

from matchops_devenv import statedir
from matchops_devenv.procs import Service


class LocalServer(ABC):
    """A server whose main program is `_server`, with its state in `dir`."""

    dir: Path
    _server: Service

    @abstractmethod
    def start(self) -> None:
        """Start the server (on the data kept so far) and wait until it serves clients."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the server; its data is kept."""

    def running(self) -> bool:
        return self._server.running()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        statedir.release(self.dir)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def log_path(self) -> Path:
        return self._server.log_path
