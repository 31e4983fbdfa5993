"""Prometheus metrics: a collector over a node's live state and an HTTP responder on its loop.

Theory of operation. Nothing is counted for metrics on the data path: the node already
keeps plain integer counters (frames and bytes per port, switch drops per reason, loop
probes, handshakes), and `NodeCollector.collect()` reads them when a scrape asks. The
collector runs on the event loop, inside the same pass as the HTTP request that asked
for it, so it sees a consistent state and never races a frame; that is also why the
responder is a small non-blocking one on the loop and not prometheus_client's threaded
server. A request is read up to MAX_REQUEST_B with a deadline, answered, and closed;
a reply the kernel does not take at once waits for writability, so a slow scraper
costs a buffer, never a blocked loop. The hub's MAC table is never listed for a scrape:
per-port counts come from the table's own per-port sets.

Labels are port names (node names, `hub` for the hub's own TAP or, on a spoke, its one
session), drop reasons and failure kinds: never a MAC or an IP address.
"""

import logging
import time

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from l2vpn import __version__
from l2vpn.eventloop import READ, WRITE
from l2vpn.logs import RateLimitedLog
from l2vpn.tcp import listen
from l2vpn.transport import FAILURES, UP

log = logging.getLogger("l2vpn.metrics")

HUB_PORT = "hub"      # the hub's own TAP; on a spoke, its session with the hub
MAX_REQUEST_B = 8192  # request line and headers
CLIENT_TIMEOUT_S = 5.0
MAX_CLIENTS = 16
ACCEPT_BUDGET = 16
ACCEPT_REST_S = 0.5
# A spoke's FloodLimiter drop keys -> the `class` label of l2vpn_flood_limited_total.
# What generate_latest() writes (newer prometheus_client names a later version "latest").
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FLOOD_CLASSES = {"storm_broadcast": "broadcast", "storm_multicast": "multicast",
                 "probe_excess": "probe"}


class NodeCollector(Collector):
    """Builds fresh samples from a Hub or Spoke at each scrape (duck-typed by `role`)."""

    def __init__(self, node):
        self.node = node
        # Unix time of the start, from the loop's monotonic clock: one subtraction, once.
        self.start_time_s = time.time() - (node.loop.clock() - node.started)

    def collect(self):
        node = self.node
        info = GaugeMetricFamily("l2vpn_build_info", "l2vpn version; always 1",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily("l2vpn_start_time_seconds",
                                "Unix time the node started", value=self.start_time_s)
        yield GaugeMetricFamily("l2vpn_config_last_reload_successful",
                                "1 if the last config reload applied, 0 if it was refused",
                                value=1 if node.last_reload_ok else 0)
        yield GaugeMetricFamily("l2vpn_config_last_reload_success_timestamp_seconds",
                                "Unix time of the last reload that applied (the start counts)",
                                value=node.last_reload_success_s)
        now = node.loop.clock()
        if node.role == "hub":
            yield from self._hub(node, now)
        else:
            yield from self._spoke(node, now)

    # -- per port --------------------------------------------------------------------
    @staticmethod
    def _port_families():
        def counter(name, doc, extra=()):
            return CounterMetricFamily(name, doc, labels=["port", *extra])
        return {
            "frames_in": counter("l2vpn_port_receive_frames", "Frames received from the port"),
            "frames_out": counter("l2vpn_port_transmit_frames", "Frames sent out of the port"),
            "bytes_in": counter("l2vpn_port_receive_bytes", "Bytes received from the port"),
            "bytes_out": counter("l2vpn_port_transmit_bytes", "Bytes sent out of the port"),
            "up": GaugeMetricFamily("l2vpn_port_up_seconds",
                                    "Seconds since the port came up (a new session starts "
                                    "its counters again)", labels=["port"]),
        }

    @staticmethod
    def _add_port(fams, name, port, up_s):
        for key in ("frames_in", "frames_out", "bytes_in", "bytes_out"):
            fams[key].add_metric([name], getattr(port, key))
        fams["up"].add_metric([name], up_s)

    # -- hub -------------------------------------------------------------------------
    def _hub(self, hub, now):
        yield GaugeMetricFamily("l2vpn_sessions", "Spoke sessions up", value=len(hub.sessions))
        yield CounterMetricFamily("l2vpn_handshakes", "Connections a TLS handshake began on",
                                  value=hub.admission.handshakes)
        fails = CounterMetricFamily("l2vpn_handshake_failures",
                                    "Handshakes or hellos that failed, by reason",
                                    labels=["reason"])
        for reason in FAILURES:
            fails.add_metric([reason], hub.admission.handshake_failures.get(reason, 0))
        yield fails

        sw = hub.switch
        ports = []
        if hub.tap is not None:
            ports.append((HUB_PORT, hub.tap, now - hub.started))
        for cn in sorted(hub.sessions):
            s = hub.sessions[cn]
            ports.append((cn, s, now - s.up_since if s.up_since is not None else 0.0))
        fams = self._port_families()
        drops = CounterMetricFamily("l2vpn_port_drops", "Frames the switch refused from the "
                                    "port, by reason", labels=["port", "reason"])
        macs = GaugeMetricFamily("l2vpn_port_macs", "MACs learnt on the port", labels=["port"])
        blocked = GaugeMetricFamily("l2vpn_port_blocked", "1 while loop detection blocks "
                                    "the port", labels=["port"])
        for name, port, up_s in ports:
            self._add_port(fams, name, port, up_s)
            try:
                pi = sw.port_info(port)
            except KeyError:      # not a switch port (yet): nothing to say about it
                continue
            for reason, n in pi["drops"].items():
                drops.add_metric([name, reason], n)
            macs.add_metric([name], pi["macs"])
            blocked.add_metric([name], 1 if pi["blocked"] else 0)
        yield from fams.values()
        yield drops
        yield macs
        yield blocked
        yield GaugeMetricFamily("l2vpn_mac_table_entries", "MAC table entries (aged ones "
                                "until the next expiry pass, within a second)", value=len(sw))
        yield CounterMetricFamily("l2vpn_mac_moves", "MACs that moved to another port",
                                  value=sw.counters.get("moves", 0))
        detector = hub.bridge.loop_detector
        probes = detector.counters.get("probes_sent", 0) if detector is not None else 0
        yield CounterMetricFamily("l2vpn_loop_probes_sent", "Loop-detection probes sent",
                                  value=probes)

    # -- spoke -----------------------------------------------------------------------
    def _spoke(self, spoke, now):
        s = spoke.session
        up = s is not None and s.state == UP
        yield GaugeMetricFamily("l2vpn_hub_connected", "1 while the session with the hub is up",
                                value=1 if up else 0)
        yield CounterMetricFamily("l2vpn_hub_reconnects", "Reconnects scheduled after a failed "
                                  "attempt or a lost session", value=spoke.reconnects)
        fams = self._port_families()
        if up:
            self._add_port(fams, HUB_PORT, s, now - s.up_since)
        yield from fams.values()
        limited = CounterMetricFamily("l2vpn_flood_limited", "Frames dropped here past the "
                                      "hub's flood limits, by class", labels=["class"])
        for key, cls in FLOOD_CLASSES.items():
            limited.add_metric([cls], spoke.flood_drops.get(key, 0))
        yield limited


def make_registry(node) -> CollectorRegistry:
    """A registry of the node's own: its collector plus the process and platform ones."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def render(registry) -> bytes:
    """The Prometheus text format (version 0.0.4) of everything in `registry`."""
    return generate_latest(registry)


# -- the HTTP responder ------------------------------------------------------------------

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


class _Client:
    __slots__ = ("sock", "buf", "out", "timer")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.out = None     # memoryview of the reply not yet sent
        self.timer = None


class MetricsServer:
    """Answers `GET /metrics` with `body()` from inside the event loop; one request per
    connection; 404 for any other path."""

    def __init__(self, loop, address: str, port: int, body, timeout_s=CLIENT_TIMEOUT_S):
        self.loop = loop
        self.body = body
        self.timeout_s = timeout_s
        self.clients = {}
        self._errors = RateLimitedLog(log)
        self.sock = listen(address, port, backlog=16, purpose="serve metrics on",
                           port_key="metrics.listen", address_key="metrics.listen")
        loop.watch(self.sock, READ, self._accept)

    @property
    def address(self) -> tuple:
        return self.sock.getsockname()

    def _accept(self, _mask):
        for _ in range(ACCEPT_BUDGET):
            try:
                sock, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._errors.warning("accept", "metrics accept failed: %s; retrying in %g s",
                                     e, ACCEPT_REST_S)
                self.loop.rest(self.sock, self._accept, ACCEPT_REST_S)
                return
            if len(self.clients) >= MAX_CLIENTS:
                sock.close()
                self._errors.warning("busy", "%d metrics requests in progress: closing a "
                                     "new one at once", MAX_CLIENTS)
                continue
            sock.setblocking(False)
            c = _Client(sock)
            self.clients[sock] = c
            c.timer = self.loop.call_later(self.timeout_s, lambda c=c: self._drop(c))
            self.loop.watch(sock, READ, lambda _m, c=c: self._readable(c))

    def _drop(self, c):
        if self.clients.pop(c.sock, None) is None:
            return
        c.timer.cancel()
        self.loop.forget(c.sock)
        c.sock.close()

    def _readable(self, c):
        try:
            data = c.sock.recv(MAX_REQUEST_B + 1 - len(c.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c)
            return
        if not data:
            self._drop(c)
            return
        c.buf += data
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            end = c.buf.find(b"\n\n")
        if end >= 0:
            self._reply(c, *self._answer(c.buf[:end]))
        elif len(c.buf) > MAX_REQUEST_B:
            self._reply(c, 431, b"request too large\n")

    def _answer(self, head: bytes):
        """(status, body[, content type, head only]) for one request's head."""
        parts = head.split(b"\n", 1)[0].rstrip(b"\r").split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return 400, b"bad request\n"
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            return 405, b"only GET\n"
        if target.split(b"?", 1)[0] != b"/metrics":
            return 404, b"not found: try /metrics\n"
        try:
            body = self.body()
        except Exception:   # a collector bug must not take the loop down
            log.exception("metrics scrape failed")
            return 500, b"scrape failed (see the node's log)\n"
        return 200, body, CONTENT_TYPE, method == b"HEAD"

    def _reply(self, c, status, body, ctype="text/plain; charset=utf-8", head_only=False):
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n"
                + ("Allow: GET, HEAD\r\n" if status == 405 else "") + "\r\n").encode()
        c.out = memoryview(head if head_only else head + body)
        self.loop.watch(c.sock, WRITE, lambda _m, c=c: self._writable(c))
        self._writable(c)

    def _writable(self, c):
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c)
            return
        c.out = c.out[n:]
        if not c.out:
            self._drop(c)

    def close(self):
        for c in list(self.clients.values()):
            self._drop(c)
        self.loop.forget(self.sock)
        self.sock.close()
