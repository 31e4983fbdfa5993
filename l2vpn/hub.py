"""The hub: accepts spoke sessions and switches frames between them and its own TAP.

Every session that finished its hello is a switch port named after its certificate CN;
the hub's own TAP, when configured, is the port named `hub`. The switch table decides,
the ports carry; frames are in vnet form (virtio-net header first) and each port turns
them into what its far side takes. When a frame's one destination is backed up, the
source is paused until that destination drains, so a fast sender slows down instead of
filling memory.
"""

import errno
import logging
import resource

from l2vpn import pki
from l2vpn.config import NODE_NAME
from l2vpn.errors import PKIError
from l2vpn.frame import format_mac
from l2vpn.logs import RateLimitedLog
from l2vpn.node import Node
from l2vpn.loop import READ
from l2vpn.offload import VNET_HDR_LEN
from l2vpn.switch import SwitchTable
from l2vpn.transport import CLOSED, Session, format_addr, listen
from l2vpn.wire import CAP_VNET_HDR

log = logging.getLogger("l2vpn.hub")

HUB_PORT = "hub"
ACCEPT_BUDGET = 64
ACCEPT_REST_S = 0.5
# accept() errors that will repeat until something is freed: rest instead of spinning
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Hub(Node):
    role = "hub"

    def __init__(self, cfg, loop=None):
        super().__init__(cfg, loop)
        self.switch = SwitchTable(aging_s=cfg.switch.aging_s, max_entries=cfg.switch.max_entries)
        self.sessions = {}        # CN -> Session, only sessions that are up
        self.pending = set()      # handshaking or waiting for the hello
        self.refusals = RateLimitedLog(log)
        self.listener = None

    def _start(self):
        _raise_fd_limit()
        self.context = pki.hub_context(self.cfg.tls)
        self.listener = listen(self.cfg.listen.address, self.cfg.listen.port)
        self._closers.append(self.listener.close)
        if self.cfg.tap is not None:
            self.tap = self.open_tap(self.cfg.tap, HUB_PORT, self._forward)
            self.switch.add_port(self.tap)
        self.loop.watch(self.listener, READ, self._accept)
        log.info("hub %s listening on %s", self.cfg.node,
                 format_addr((self.cfg.listen.address, self.cfg.listen.port)))

    # -- sessions --------------------------------------------------------------------
    def _accept(self, _mask):
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
                    self.loop.rest(self.listener, self._accept, ACCEPT_REST_S)
                else:
                    self.refusals.warning("accept", "accept failed: %s", e)
                return
            sock.setblocking(False)
            session = Session(
                self.loop, sock, format_addr(addr), context=self.context, server_side=True,
                node=self.cfg.node, mtu=self._mtu(),
                caps=CAP_VNET_HDR if self.cfg.listen.offload else 0, on_secure=self._on_secure,
                on_up=self._on_up, on_frame=self._forward, on_close=self._on_close)
            if session.state != CLOSED:
                self.pending.add(session)

    def _mtu(self) -> int:
        return self.cfg.tap.mtu if self.cfg.tap is not None else 1500

    def _on_secure(self, session):
        try:
            cn = pki.peer_common_name(session.tls)
        except PKIError as e:
            return f"refused: {e}"
        if not NODE_NAME.fullmatch(cn):
            return f"refused: certificate CN {cn!r} is not a valid node name"
        if cn == HUB_PORT and self.tap is not None:
            return f"refused: CN {cn!r} is the name of the hub's own TAP port"
        session.cn = cn
        return None

    def _on_up(self, session):
        if session.name != session.cn:
            return (f"refused: hello names node {session.name!r} but the certificate CN is "
                    f"{session.cn!r}; set node: {session.cn} in the spoke's config")
        if session.peer.mtu != self._mtu():
            log.warning("spoke %s has MTU %d, we have %d: frames above the smaller one will "
                        "be dropped by a TAP", session.name, session.peer.mtu, self._mtu())
        old = self.sessions.pop(session.cn, None)
        if old is not None:
            log.warning("spoke %s connected again from %s: replacing its session from %s",
                        session.cn, session.remote, old.remote)
            self.switch.drop_port(old)
            old.goodbye("replaced by a newer session", linger_s=0.2)
        self.pending.discard(session)
        self.sessions[session.cn] = session
        self.switch.add_port(session)
        log.info("spoke %s up from %s (%s)", session.cn, session.remote,
                 "super-frames carried whole" if session.vnet else "plain frames")
        return None

    def _on_close(self, session, reason):
        self.pending.discard(session)
        if self.sessions.get(session.cn) is session:
            del self.sessions[session.cn]
            flushed = self.switch.drop_port(session)
            log.info("spoke %s down: %s (%d MACs flushed)", session.cn, reason, flushed)
        elif session.up_since is None:
            self.refusals.warning("refused", "session from %s refused: %s",
                                  session.remote, reason)

    # -- data path -------------------------------------------------------------------
    def _forward(self, source, frame):
        ports = self.switch.decide(frame, source, self.loop.clock(), VNET_HDR_LEN)
        for port in ports:
            port.send_frame(frame)
        if len(ports) == 1:
            dest = ports[0]
            if dest.congested:
                source.pause()
                dest.add_waiter(source)

    def _tick(self):
        now = self.loop.clock()
        self.switch.expire(now)
        for session in list(self.sessions.values()):
            self.check_session_health(session, now)

    def _say_goodbye(self):
        for session in list(self.sessions.values()) + list(self.pending):
            session.goodbye("hub shutting down", linger_s=0.5)

    def status(self) -> dict:
        now = self.loop.clock()
        out = self.base_status()
        out["listen"] = format_addr((self.cfg.listen.address, self.cfg.listen.port))
        out["sessions"] = [s.snapshot(now) for s in sorted(self.sessions.values(),
                                                           key=lambda s: s.cn)]
        out["pending"] = len(self.pending)
        out["macs"] = [{"mac": format_mac(mac), "port": port.name, "age_s": round(age, 3)}
                       for mac, port, age in self.switch.entries(now)]
        out["switch"] = {"entries": len(self.switch), "aging_s": self.cfg.switch.aging_s,
                         "counters": dict(self.switch.counters)}
        return out


def _raise_fd_limit():
    """Each spoke costs a descriptor: take the hard limit, not the 1024 soft default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d: %s", soft, e)
