"""A loopback TCP relay to a unix socket.

The Connect Python runtime sends its requests through pyqwest (reqwest),
which has no unix socket transport. The sandboxer serves its API on a unix
socket only, so for a ``unix://`` address the client listens on an ephemeral
127.0.0.1 port and copies bytes both ways between each accepted connection
and a new connection to the socket. HTTP/2 (cleartext, prior knowledge)
passes through unchanged.

A unix socket of mode 0600 admits only its owner; a loopback port admits
every local user. The relay therefore accepts a connection only when the
kernel reports (``/proc/net/tcp``) that its peer socket belongs to the same
user as this process, and closes it otherwise.
"""

from __future__ import annotations

import os
import socket
import stat
import threading

_BUF = 64 * 1024


def _peer_uid(conn: socket.socket) -> int | None:
    """The uid owning the local peer socket of an accepted loopback connection."""
    host, port = conn.getpeername()[:2]
    want = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{port:04X}"
    try:
        with open("/proc/net/tcp", encoding="ascii") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == want:
                    return int(fields[7])
    except OSError:
        return None
    return None


class UnixRelay:
    """Relays 127.0.0.1:<port> to a unix socket until :meth:`close`.

    Owns its threads: :meth:`close` stops accepting, closes every relayed
    connection and waits for all of them.
    """

    def __init__(self, path: str) -> None:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise OSError(f"{path}: not a unix socket")
        self._path = path
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.bind(("127.0.0.1", 0))
            self._listener.listen(16)
        except OSError:
            self._listener.close()
            raise
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="magnetar-relay", daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        """The http:// base URL that reaches the unix socket."""
        return f"http://127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if _peer_uid(conn) != os.geteuid():
                conn.close()
                continue
            try:
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(self._path)
            except OSError:
                upstream.close()
                conn.close()
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                    upstream.close()
                    return
                self._conns.update((conn, upstream))
                self._threads = [t for t in self._threads if t.is_alive()]
                done = [0]  # pumps of this pair that finished, under self._lock
                for src, dst in ((conn, upstream), (upstream, conn)):
                    t = threading.Thread(
                        target=self._pump, args=(src, dst, done), name="magnetar-relay-pump", daemon=True
                    )
                    self._threads.append(t)
                    t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, done: list[int]) -> None:
        try:
            self._copy(src, dst)
        finally:
            # The second pump of a pair to finish closes both sockets.
            with self._lock:
                done[0] += 1
                if done[0] < 2:
                    return
                self._conns.discard(src)
                self._conns.discard(dst)
            src.close()
            dst.close()

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(_BUF)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        """Stops the relay and waits for its threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._conns)
            threads = list(self._threads)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._acceptor.join()
        for t in threads:
            t.join()
        for c in conns:
            c.close()
