"""A TCP proxy a test controls, to cut, delay or reset traffic to a real server.

It runs on real OS threads and sockets (not eventlet's green ones), so it keeps forwarding
whatever the test process's event loop is doing. Usable from any test tier:

    with FaultProxy(("127.0.0.1", 5672)) as proxy:
        uri = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        proxy.cut()       # drop every connection and refuse new ones
        proxy.restore()   # accept again
        proxy.delay(0.2)  # add latency to every chunk forwarded
        proxy.stall()     # keep connections open but forward nothing (a hung peer)
        proxy.blackhole() # silence open connections (half-open) and refuse new ones
"""

import eventlet.patcher

_socket = eventlet.patcher.original("socket")
_select = eventlet.patcher.original("select")
_threading = eventlet.patcher.original("threading")
_time = eventlet.patcher.original("time")

__all__ = ["FaultProxy"]


class FaultProxy:
    def __init__(self, target, host="127.0.0.1", port=0):
        self.target = target
        self.listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        self.listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(128)
        self.host, self.port = self.listener.getsockname()
        self._lock = _threading.Lock()
        self._pairs = []
        self._silenced = set()
        self._up = True
        self._latency = 0.0
        self._stalled = False
        self._running = True
        self.accepted = 0
        self._thread = _threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    # -- control --------------------------------------------------------------------------
    def cut(self):
        """Close every open connection abruptly (RST) and refuse new ones until restore()."""
        self._up = False
        self.reset()

    def blackhole(self):
        """Forward nothing more on the open connections, without closing them: each end sees
        a half-open connection (as after a host crash or a lost route), which only its own
        timeouts or heartbeats can find out. New connections are refused until restore();
        silenced ones stay silent."""
        self._up = False
        with self._lock:
            self._silenced.update(self._pairs)

    def restore(self):
        """Accept again, and forward again on connections a stall held."""
        self._up = True
        self._stalled = False

    def stall(self):
        """Keep every connection open and accept new ones, but forward nothing until restore()
        -- a peer that stopped answering without closing anything."""
        self._stalled = True

    def reset(self):
        """Reset every open connection; new ones are still accepted."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _abort(sock)

    def delay(self, seconds):
        self._latency = max(0.0, float(seconds))

    def close(self):
        self._running = False
        self.cut()
        try:
            self.listener.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- forwarding -------------------------------------------------------------------------
    def _accept_loop(self):
        while self._running:
            try:
                readable, _, _ = _select.select([self.listener], [], [], 0.2)
                if not readable:
                    continue
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._up:
                _abort(client)
                continue
            try:
                upstream = _socket.create_connection(self.target, timeout=3)
                upstream.settimeout(None)
            except OSError:
                _abort(client)
                continue
            self.accepted += 1
            with self._lock:
                self._pairs.append((client, upstream))
            _threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client, upstream):
        peers = {client: upstream, upstream: client}
        try:
            while self._running:
                if self._stalled:
                    _time.sleep(0.05)
                    continue
                readable, _, _ = _select.select(list(peers), [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if (client, upstream) in self._silenced:
                        continue  # swallowed
                    if self._latency:
                        _time.sleep(self._latency)
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in (client, upstream):
                _abort(sock)
            with self._lock:
                if (client, upstream) in self._pairs:
                    self._pairs.remove((client, upstream))
                self._silenced.discard((client, upstream))


def _abort(sock):
    """Close with RST rather than FIN, as a crashed peer or a cut cable would look."""
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
