"""The management socket: a Unix stream socket (mode 0600) that answers `status` with JSON.

One request per connection: the client sends a line ("status"), the node answers one
JSON document and closes. Unix sockets are named by path, so `l2vpn status` reaches a
node in any network namespace. The answer is written as the client reads it, on the
loop, never with a blocking send: a hub's status with 100,000 MACs is megabytes, and a
slow or stopped reader must not hold up forwarding.

A handler may answer with a `Stream` instead of a dict: bytes made as the client takes
them (a capture runs for hours; a huge status can be made in pieces). The server pulls
when the socket is writable, at most STREAM_BUDGET_B per loop pass so one fast reader
cannot hold the loop, and sleeps while the stream has nothing until it calls the wake
callback. The client ends a stream early by shutting down its writing side (the stream
is told `client_done()` and finishes); the connection going away, for any reason, is
`close()`.
"""

import errno
import json
import logging
import os
import socket
import stat

from l2vpn.errors import L2VPNError, TransportError
from l2vpn.logs import RateLimitedLog
from l2vpn.eventloop import READ, WRITE

log = logging.getLogger("l2vpn.management")

MAX_REQUEST_B = 4096
CLIENT_TIMEOUT_S = 2.0      # to send the request
REPLY_TIMEOUT_S = 30.0      # to read the whole answer
ACCEPT_REST_S = 0.5
STREAM_BUDGET_B = 256 << 10   # pulled and sent per connection per loop pass
STREAM_CHUNK_B = 64 << 10     # asked of a stream's pull at a time
CLOSING_BUDGET_B = 1 << 20    # what a stopping node still tries to hand a stream's client


class Stream:
    """A reply made as it is sent; subclass and override `pull` (the rest is optional).

    `timeout_s` bounds the whole reply (None: no bound, for a stream that keeps its own
    memory bounded, such as a capture).
    """

    timeout_s: float | None = REPLY_TIMEOUT_S
    pass_budget_b: int = STREAM_BUDGET_B   # a stream whose pull costs CPU may ask for less

    def attach(self, wake) -> None:
        """Keep `wake()`: to be called when there are bytes again after pull gave b""."""
        self.wake = wake

    def pull(self, limit: int) -> bytes | None:
        """Up to about `limit` bytes; b"" for nothing now, None when finished."""
        raise NotImplementedError

    def client_done(self) -> None:
        """The client will send nothing more (it shut down its writing side)."""

    def close(self) -> None:
        """The connection is gone: the client left, it failed, or the node stops."""


class BytesStream(Stream):
    """A reply that is all there from the start."""

    def __init__(self, data: bytes):
        self._data = memoryview(data)

    def pull(self, limit):
        if not self._data:
            return None
        chunk, self._data = self._data[:limit], self._data[limit:]
        return chunk


class _Reply:
    """A connection sending a stream: what is pulled but not yet sent, and its state."""

    __slots__ = ("client", "stream", "pending", "eof", "finished", "closed")

    def __init__(self, client, stream):
        self.client = client
        self.stream = stream
        self.pending = b""
        self.eof = False        # the client shut down its writing side
        self.finished = False   # pull said None: close once pending is sent
        self.closed = False


class ManagementServer:
    """Answers requests from `handler(request: str) -> dict` inside the event loop."""

    def __init__(self, loop, path, handler):
        self.loop = loop
        self.path = os.fspath(path)
        self.handler = handler
        self._errors = RateLimitedLog(log)
        self.sock = _bind(self.path)
        self._deadlines = {}      # client socket -> the Timer that drops it
        self._replies = {}        # client socket -> _Reply, while a reply is sent
        loop.watch(self.sock, READ, self._accept)

    def _accept(self, _mask):
        try:
            client, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            # a listener stays readable while accept fails: rest, or this would spin
            self._errors.warning("accept", "management accept failed: %s; retrying in %g s",
                                 e, ACCEPT_REST_S)
            self.loop.rest(self.sock, self._accept, ACCEPT_REST_S)
            return
        client.setblocking(False)
        self.loop.watch(client, READ, lambda _m: self._serve(client))
        self._deadline(client, CLIENT_TIMEOUT_S)

    def _deadline(self, client, seconds):
        old = self._deadlines.get(client)
        if old is not None:
            old.cancel()
        self._deadlines[client] = self.loop.call_later(seconds, lambda: self._drop(client))

    def _drop(self, client):
        timer = self._deadlines.pop(client, None)
        if timer is not None:
            timer.cancel()
        self.loop.forget(client)
        reply = self._replies.pop(client, None)
        if reply is not None:
            reply.closed = True
            try:
                reply.stream.close()
            except Exception:
                log.exception("closing a management stream failed")
        client.close()

    def _serve(self, client):
        try:
            request = client.recv(MAX_REQUEST_B)
        except BlockingIOError:
            return
        except OSError:
            self._drop(client)
            return
        self.loop.forget(client)
        command = request.decode("utf-8", "replace").strip() or "status"
        try:
            answer = self.handler(command)
            if not isinstance(answer, Stream):
                answer = BytesStream(json.dumps(answer).encode() + b"\n")
        except Exception as e:  # a status bug must not take the data path down
            log.exception("management request %r failed", command)
            answer = BytesStream(json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
                                 + b"\n")
        timer = self._deadlines.pop(client, None)
        if timer is not None:
            timer.cancel()
        if answer.timeout_s is not None:
            self._deadline(client, answer.timeout_s)
        reply = self._replies[client] = _Reply(client, answer)
        answer.attach(lambda: self._wake(reply))
        self._pump(reply)

    def _wake(self, reply):
        if not reply.closed:
            self._watch(reply, WRITE)

    def _watch(self, reply, want_write):
        # READ while the client may still shut down its side; WRITE while there is more.
        events = (0 if reply.eof else READ) | want_write
        self.loop.watch(reply.client, events, lambda mask: self._on_ready(reply, mask))

    def _on_ready(self, reply, mask):
        if mask & READ and not reply.eof:
            try:
                data = reply.client.recv(MAX_REQUEST_B)
            except BlockingIOError:
                data = None
            except OSError:
                self._drop(reply.client)
                return
            if data == b"":
                reply.eof = True
                reply.stream.client_done()
                if reply.closed:
                    return
                mask |= WRITE     # what the stream has left to say, now
        if mask & WRITE:
            self._pump(reply)

    def _pump(self, reply):
        """Pull and send up to the stream's pass budget; then wait for the socket or the
        stream."""
        client, budget = reply.client, reply.stream.pass_budget_b
        while budget > 0:
            if not reply.pending:
                if reply.finished:
                    self._drop(client)
                    return
                chunk = reply.stream.pull(min(budget, STREAM_CHUNK_B))
                if reply.closed:
                    return
                if chunk is None:
                    reply.finished = True
                    continue
                if not chunk:
                    self._watch(reply, 0)     # until the stream wakes us
                    return
                reply.pending = memoryview(chunk)
            try:
                sent = client.send(reply.pending)
            except BlockingIOError:
                self._watch(reply, WRITE)
                return
            except OSError:
                self._drop(client)
                return
            reply.pending = reply.pending[sent:]
            budget -= sent
        self._watch(reply, WRITE)     # more to send: the next pass, after the others

    def close(self):
        for reply in list(self._replies.values()):
            self._last_words(reply)
            self._drop(reply.client)
        self.loop.forget(self.sock)
        self.sock.close()
        try:
            os.unlink(self.path)
        except (FileNotFoundError, PermissionError):
            pass  # after a privilege drop: the next start replaces the stale socket


    def _last_words(self, reply):
        """The node stops: let a stream finish and send what the socket takes now."""
        try:
            if not reply.finished:
                reply.stream.client_done()
            budget = CLOSING_BUDGET_B
            while budget > 0:
                if not reply.pending:
                    chunk = None if reply.finished else reply.stream.pull(STREAM_CHUNK_B)
                    if not chunk:
                        return
                    reply.pending = memoryview(chunk)
                sent = reply.client.send(reply.pending)
                reply.pending = reply.pending[sent:]
                budget -= sent
        except OSError:
            pass    # full or gone: the client keeps the whole blocks it has
        except Exception:
            log.exception("finishing a management stream failed")


def _bind(path: str) -> socket.socket:
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, mode=0o755, exist_ok=True)
    except OSError as e:
        raise TransportError(
            f"cannot create {folder} for the management socket: {e.strerror}; "
            f"set management.socket to a writable path") from None
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise TransportError(f"management socket path {path} exists and is not a socket; "
                                 f"set management.socket elsewhere")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise TransportError(
                f"management socket {path} is in use: another l2vpn node runs with it; "
                f"stop it or set management.socket")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise TransportError(f"cannot bind management socket {path}: {e.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    sock.setblocking(False)
    return sock


def query(path, command: str = "status", timeout_s: float = 5.0) -> dict:
    """Ask a running node; errors become one L2VPNError line."""
    path = os.fspath(path)
    sock = request(path, command, timeout_s)
    try:
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except socket.timeout:
        raise L2VPNError(f"no answer from {path} within {timeout_s:g} s") from None
    except OSError as e:
        raise L2VPNError(f"reading the answer of {path}: {e.strerror}") from None
    finally:
        sock.close()
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise L2VPNError(f"{path} answered something that is not JSON") from None


def request(path, command: str, timeout_s: float = 5.0) -> socket.socket:
    """Connect to a running node and send one request; the caller reads the answer."""
    path = os.fspath(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
    except BaseException as e:
        sock.close()
        if isinstance(e, OSError):
            raise _unreachable(path, e, timeout_s) from None
        raise
    return sock


def _unreachable(path: str, e: OSError, timeout_s: float) -> L2VPNError:
    if isinstance(e, FileNotFoundError):
        return L2VPNError(f"no l2vpn node at {path}: socket not found; is it running? "
                          f"(pass -s SOCKET)")
    if isinstance(e, ConnectionRefusedError):
        return L2VPNError(f"no l2vpn node listening at {path} (stale socket)")
    if isinstance(e, PermissionError):
        return L2VPNError(f"permission denied on {path}: run as root")
    if isinstance(e, socket.timeout):
        return L2VPNError(f"no answer from {path} within {timeout_s:g} s")
    if e.errno == errno.ENOTSOCK:
        return L2VPNError(f"{path} is not a socket")
    return L2VPNError(f"cannot reach {path}: {e.strerror}")
