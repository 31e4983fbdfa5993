"""Who becomes a port of the hub: accepting connections, their handshakes, and the
identity each spoke proves.

A connection is accepted into `pending`, where it stays through the TLS handshake and
the hello. It becomes a session (and the bridge a port, through `on_port_up`) only when
its certificate verifies, is not revoked, its CN is a valid node name that is not the
hub's own port, and its hello names that same node. A spoke that connects again
replaces its older session. Failures are counted by reason (transport.FAILURES) for
metrics, and logged rate-limited: a scanner must not flood the log.
"""

import errno
import logging

from l2vpn import pki
from l2vpn.config import NODE_NAME
from l2vpn.errors import PKIError
from l2vpn.logs import RateLimitedLog
from l2vpn.eventloop import READ
from l2vpn.tcp import format_addr
from l2vpn.transport import (CLOSED, DEFAULTS, FAILURES, NAME_MISMATCH, NOT_LISTED, PROTOCOL,
                             UNTRUSTED, Session)
from l2vpn.wire import CAP_FLOOD_LIMITS, CAP_VNET_HDR

log = logging.getLogger("l2vpn.hub")

ACCEPT_BUDGET = 64
ACCEPT_REST_S = 0.5
MAX_PENDING = 1024    # handshakes in progress; past it new connections are closed at once
REPLACED_LINGER_S = 0.2
# accept() errors that will repeat until something is freed: rest instead of spinning
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Admission:
    """Accepts on a listener (from `open`); hands sessions that proved who they are to
    `on_port_up`, and the ones that end to `on_port_down` (which returns the MACs flushed)."""

    def __init__(self, loop, cfg, *, mtu, reserved, revoked, on_port_up, on_port_down,
                 on_frame):
        self.loop = loop
        self.cfg = cfg              # config.HubConfig
        self.listener = None
        self.context = None
        self.mtu = mtu
        self.reserved = reserved    # port names no spoke may take (`hub`, with a TAP)
        self.revoked = revoked      # Node.revoked: why a peer's certificate is refused
        self.on_port_up = on_port_up
        self.on_port_down = on_port_down
        self.on_frame = on_frame
        self.sessions = {}          # CN -> Session, only sessions that are up
        self.pending = set()        # handshaking or waiting for the hello
        self.refusals = RateLimitedLog(log)
        self.handshakes = 0         # connections a handshake began on
        self.handshake_failures = dict.fromkeys(FAILURES, 0)   # by transport.FAILURES
        self.stopping = False       # failures while stopping are not the peers' doing
        self.thresholds = DEFAULTS  # transport.Thresholds of the sessions accepted

    def open(self, listener, context) -> None:
        """Start accepting connections on `listener`, with TLS `context`."""
        self.listener, self.context = listener, context
        self.loop.watch(listener, READ, self.accept)

    def accept(self, _mask=READ):
        for _ in range(ACCEPT_BUDGET):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _EXHAUSTED:
                    self.refusals.warning("accept-exhausted", "accept failed: %s; not accepting "
                                          "for %g s (raise LimitNOFILE / ulimit -n)",
                                          e.strerror, ACCEPT_REST_S)
                    self.loop.rest(self.listener, self.accept, ACCEPT_REST_S)
                else:
                    self.refusals.warning("accept", "accept failed: %s", e)
                return
            if len(self.pending) >= MAX_PENDING:
                sock.close()
                self.refusals.warning("pending", "%d handshakes in progress: closing the "
                                      "connection from %s at once", len(self.pending),
                                      format_addr(addr))
                continue
            sock.setblocking(False)
            self.handshakes += 1
            session = Session(
                self.loop, sock, format_addr(addr), context=self.context, server_side=True,
                node=self.cfg.node, mtu=self.mtu,
                caps=(CAP_VNET_HDR if self.cfg.listen.offload else 0) | CAP_FLOOD_LIMITS,
                on_secure=self.on_secure, on_up=self.on_up, on_frame=self.on_frame,
                on_close=self.on_close, thresholds=self.thresholds)
            if session.state != CLOSED:
                self.pending.add(session)

    def on_secure(self, session):
        """After the TLS handshake: is the certificate's CN a name this hub takes?"""
        try:
            cn = pki.peer_common_name(session.tls)
        except PKIError as e:
            session.failure = UNTRUSTED
            return f"refused: {e}"
        if not NODE_NAME.fullmatch(cn):
            session.failure = NAME_MISMATCH
            return f"refused: certificate CN {cn!r} is not a valid node name"
        if cn in self.reserved:
            session.failure = NAME_MISMATCH
            return f"refused: CN {cn!r} is the name of the hub's own TAP port"
        session.cn = cn
        if not self.listed(cn):
            session.failure = NOT_LISTED
            return (f"refused: {cn} is not listed under ports (admit: listed); add "
                    f"ports: {{{cn}: {{}}}} to admit it")
        return self.revoked(session)

    def listed(self, cn: str) -> bool:
        """Whether `admit` lets this CN in: any, or listed under `ports`."""
        return self.cfg.admit != "listed" or cn in self.cfg.ports

    def on_up(self, session):
        """After the hello: the session becomes the port named by its CN."""
        if session.name != session.cn:
            session.failure = NAME_MISMATCH
            return (f"refused: hello names node {session.name!r} but the certificate CN is "
                    f"{session.cn!r}; set node: {session.cn} in the spoke's config")
        if session.peer.mtu != self.mtu:
            log.warning("spoke %s has MTU %d, we have %d: frames above the smaller one will "
                        "be dropped by a TAP", session.name, session.peer.mtu, self.mtu)
        old = self.sessions.pop(session.cn, None)
        if old is not None:
            log.warning("spoke %s connected again from %s: replacing its session from %s",
                        session.cn, session.remote, old.remote)
            self.on_port_down(old)
            old.goodbye("replaced by a newer session", linger_s=REPLACED_LINGER_S)
        self.pending.discard(session)
        self.sessions[session.cn] = session
        self.on_port_up(session)
        if session.flood_limits:   # the spoke drops a storm before it costs us anything
            st = self.cfg.switch.storm
            session.send_limits(st.broadcast_pps, st.multicast_pps, st.unknown_unicast_pps)
        log.info("spoke %s up from %s (%s%s)", session.cn, session.remote,
                 "super-frames carried whole" if session.vnet else "plain frames",
                 "" if session.flood_limits else "; it does not apply flood limits itself")
        return None

    def on_close(self, session, reason):
        self.pending.discard(session)
        if self.sessions.get(session.cn) is session:
            del self.sessions[session.cn]
            flushed = self.on_port_down(session)
            log.info("spoke %s down: %s (%d MACs flushed)", session.cn, reason, flushed)
        elif session.up_since is None:
            if not self.stopping:
                self.handshake_failures[session.failure or PROTOCOL] += 1
            self.refusals.warning("refused", "session from %s refused: %s",
                                  session.remote, reason.removeprefix("refused: "))

    def all_sessions(self) -> list:
        return list(self.sessions.values()) + list(self.pending)
