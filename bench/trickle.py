"""A callback receiver that never finishes answering: it reads the request, then sends
one byte of an endless header line every `interval` seconds (or, with `tls_stall`, one
byte of a TLS record that never completes). It records what the sender did: when
each connection opened, whether it is still open, and whether the client hung up."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass


@dataclass
class Connection:
    opened: float
    closed: float | None = None
    request: bytes = b""
    trickled: int = 0  # bytes sent after the request was read
    hung_up_by_client: bool = False


class TrickleReceiver:
    def __init__(self, interval: float = 1.0, *, tls_stall: bool = False) -> None:
        self.interval = interval
        self.tls_stall = tls_stall
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self.url = f"{'https' if tls_stall else 'http'}://127.0.0.1:{self.port}/herald-events"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            conn = Connection(opened=time.monotonic())
            with self._lock:
                self.connections.append(conn)
            threading.Thread(target=self._serve, args=(sock, conn), daemon=True).start()

    def _serve(self, sock: socket.socket, conn: Connection) -> None:
        try:
            sock.settimeout(self.interval)
            if self.tls_stall:
                # A TLS handshake record announcing 16 KB, then a byte at a time.
                sock.sendall(b"\x16\x03\x03\x40\x00")
            else:
                while b"\r\n\r\n" not in conn.request:
                    chunk = sock.recv(65536)
                    if not chunk:
                        conn.hung_up_by_client = True
                        return
                    conn.request += chunk
                sock.sendall(b"HTTP/1.1 200 OK\r\nX-Trickle: ")
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    if sock.recv(65536) == b"":  # the client hung up
                        conn.hung_up_by_client = True
                        return
                sock.sendall(b"a")
                conn.trickled += 1
        except OSError:
            conn.hung_up_by_client = True
        finally:
            conn.closed = time.monotonic()
            sock.close()

    def open_connections(self) -> list[Connection]:
        with self._lock:
            return [c for c in self.connections if c.closed is None]

    def snapshot(self) -> list[Connection]:
        with self._lock:
            return list(self.connections)

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
