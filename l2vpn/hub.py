"""The hub: accepts spoke sessions and switches frames between them and its own TAP.

Every session that finished its hello is a switch port named after its certificate CN;
the hub's own TAP, when configured, is the port named `hub`. The hub only wires three
parts together, each owning one thing: admission.py (who becomes a port), bridge.py
(what crosses between ports, and the protection around it) and hubstatus.py (what
`status` shows). Metrics read the same parts (metrics.py).
"""

import logging
import resource

from l2vpn import hubstatus, pki
from l2vpn.admission import Admission
from l2vpn.bridge import Bridge
from l2vpn.node import Node
from l2vpn.tcp import format_addr

log = logging.getLogger("l2vpn.hub")

HUB_PORT = "hub"
GOODBYE_LINGER_S = 0.5


class Hub(Node):
    role = "hub"

    def __init__(self, cfg, edges, loop=None, notifier=None):
        super().__init__(cfg, edges, loop, notifier)
        self.bridge = Bridge(self.loop, cfg.switch, cfg.ports)
        self.switch = self.bridge.switch      # read by status, metrics and tests alike
        self.admission = Admission(
            self.loop, cfg, mtu=cfg.tap.mtu if cfg.tap is not None else 1500,
            reserved={HUB_PORT} if cfg.tap is not None else set(), revoked=self.revoked,
            on_port_up=self._session_up, on_port_down=self._session_down,
            on_frame=self.bridge.forward)
        self.sessions = self.admission.sessions   # CN -> Session, only sessions that are up

    def _start(self):
        _raise_fd_limit()
        context = self.make_context(self.cfg)
        listener = self.edges.listen(self.cfg.listen.address, self.cfg.listen.port)
        self._closers.append(listener.close)
        if self.cfg.tap is not None:
            self.tap = self.open_tap(self.cfg.tap, HUB_PORT, self.bridge.forward)
            self._add_port(self.tap, HUB_PORT, self.cfg.tap.mtu)
        self.admission.open(listener, context)
        self.bridge.start_probes()
        log.info("hub %s listening on %s", self.cfg.node,
                 format_addr((self.cfg.listen.address, self.cfg.listen.port)))

    def make_context(self, cfg):
        return pki.hub_context(cfg.tls)

    def current_context(self):
        return self.admission.context

    def _apply_config(self, old, prepared) -> None:
        cfg = self.cfg
        self.bridge.reconfigure(cfg.switch, cfg.ports)
        self.admission.cfg = cfg
        self.admission.context = prepared.context     # new handshakes; live ones keep theirs
        for cn, session in list(self.sessions.items()):
            if not self.admission.listed(cn):
                log.warning("spoke %s is not listed under ports any more (admit: listed): "
                            "ending its session", cn)
                session.close("not listed under ports any more", goodbye="not listed")

    # -- ports -----------------------------------------------------------------------
    def _session_up(self, session):
        self._add_port(session, session.cn, session.peer.mtu)

    def _session_down(self, session) -> int:
        self._port_down(session.cn, session)
        return self.bridge.drop_port(session)

    def _add_port(self, port, name, mtu):
        self.bridge.add_port(port, name, mtu)
        self._port_up(name, port)

    def ports(self) -> dict:
        out = {HUB_PORT: self.tap} if self.tap is not None else {}
        out.update(self.sessions)
        return out

    def peer_sessions(self) -> list:
        return self.admission.all_sessions()

    # -- housekeeping ----------------------------------------------------------------
    def _tick(self):
        now = self.loop.clock()
        self.bridge.tick(now)
        for session in list(self.sessions.values()):
            self.check_session_health(session, now)

    def _say_goodbye(self):
        self.admission.stopping = True
        for session in self.admission.all_sessions():
            session.goodbye("hub shutting down", linger_s=GOODBYE_LINGER_S)

    def summary(self) -> str:
        return hubstatus.summary(self)

    def status(self) -> dict:
        return hubstatus.status(self)

    def status_reply(self):
        """`status` over the management socket: streamed, so no table holds the loop."""
        return hubstatus.StatusStream(self)


def _raise_fd_limit():
    """Each spoke costs a descriptor: take the hard limit, not the 1024 soft default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open-file limit from %d: %s", soft, e)
