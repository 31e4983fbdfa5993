"""The management socket: a Unix stream socket (mode 0600) that answers `status` with JSON.

One request per connection: the client sends a line ("status"), the node answers one
JSON document and closes. Unix sockets are named by path, so `l2vpn status` reaches a
node in any network namespace. The answer is written as the client reads it, on the
loop, never with a blocking send: a hub's status with 100,000 MACs is megabytes, and a
slow or stopped reader must not hold up forwarding.
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


class ManagementServer:
    """Answers requests from `handler(request: str) -> dict` inside the event loop."""

    def __init__(self, loop, path, handler):
        self.loop = loop
        self.path = os.fspath(path)
        self.handler = handler
        self._errors = RateLimitedLog(log)
        self.sock = _bind(self.path)
        self._deadlines = {}      # client socket -> the Timer that drops it
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
            data = json.dumps(self.handler(command)).encode() + b"\n"
        except Exception as e:  # a status bug must not take the data path down
            log.exception("management request %r failed", command)
            data = json.dumps({"error": f"{type(e).__name__}: {e}"}).encode() + b"\n"
        self._deadline(client, REPLY_TIMEOUT_S)
        self._write(client, memoryview(data))

    def _write(self, client, data):
        """Send what the client takes now; the rest each time it can take more."""
        try:
            while data:
                data = data[client.send(data):]
        except BlockingIOError:
            self.loop.watch(client, WRITE, lambda _m: self._write(client, data))
            return
        except OSError:
            pass
        self._drop(client)

    def close(self):
        self.loop.forget(self.sock)
        self.sock.close()
        try:
            os.unlink(self.path)
        except (FileNotFoundError, PermissionError):
            pass  # after a privilege drop: the next start replaces the stale socket


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
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except FileNotFoundError:
        raise L2VPNError(f"no l2vpn node at {path}: socket not found; is it running? "
                         f"(pass -s SOCKET)") from None
    except ConnectionRefusedError:
        raise L2VPNError(f"no l2vpn node listening at {path} (stale socket)") from None
    except PermissionError:
        raise L2VPNError(f"permission denied on {path}: run as root") from None
    except socket.timeout:
        raise L2VPNError(f"no answer from {path} within {timeout_s:g} s") from None
    except OSError as e:
        if e.errno == errno.ENOTSOCK:
            raise L2VPNError(f"{path} is not a socket") from None
        raise L2VPNError(f"cannot reach {path}: {e.strerror}") from None
    finally:
        sock.close()
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise L2VPNError(f"{path} answered something that is not JSON") from None
