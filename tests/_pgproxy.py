"""A TCP proxy to PostgreSQL on 127.0.0.1 that cuts connections right after COMMIT.

Every ``every``-th COMMIT a client sends is forwarded; the proxy waits until the server
has answered it (so the transaction is durable), then closes the client's connection
instead of passing the answer on: the client cannot tell whether its COMMIT landed.
It speaks just enough of the wire protocol to find COMMITs: it declines SSL itself,
forwards the startup message, then reads typed messages (type byte, length).
"""

from __future__ import annotations

import select
import socket
import struct
import threading

SSL_REQUEST = 80877103


class CommitCutter:
    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432), every: int = 40):
        self.target = target
        self.every = every
        self.commits = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _cut_now(self) -> bool:
        with self._lock:
            self.commits += 1
            if self.commits % self.every:
                return False
            self.cuts += 1
            return True

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(self.target)
        to_server, from_server = bytearray(), bytearray()
        started = cutting = False
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [], 5)
                if self._stopped.is_set():
                    return
                if client in ready:
                    data = client.recv(65536)
                    if not data:
                        return
                    to_server += data
                    while True:
                        if not started:
                            if len(to_server) < 8:
                                break
                            (size,) = struct.unpack("!I", to_server[:4])
                            if len(to_server) < size:
                                break
                            message, to_server[:] = bytes(to_server[:size]), to_server[size:]
                            if size == 8 and struct.unpack("!I", message[4:8])[0] == SSL_REQUEST:
                                client.sendall(b"N")  # no SSL: the startup message follows
                                continue
                            started = True
                            server.sendall(message)
                            continue
                        if len(to_server) < 5:
                            break
                        (size,) = struct.unpack("!I", to_server[1:5])
                        if len(to_server) < size + 1:
                            break
                        message = bytes(to_server[: size + 1])
                        del to_server[: size + 1]
                        if message[:1] == b"Q" and message[5:].lstrip().upper().startswith(
                            b"COMMIT"
                        ):
                            cutting = cutting or self._cut_now()
                        server.sendall(message)
                if server in ready:
                    data = server.recv(65536)
                    if not data:
                        return
                    if not cutting:
                        client.sendall(data)
                        continue
                    from_server += data
                    # Swallow the answer; once ReadyForQuery came, the COMMIT is done.
                    while len(from_server) >= 5:
                        (size,) = struct.unpack("!I", from_server[1:5])
                        if len(from_server) < size + 1:
                            break
                        kind = from_server[:1]
                        del from_server[: size + 1]
                        if kind == b"Z":
                            return
        except OSError:
            return
        finally:
            client.close()
            server.close()
