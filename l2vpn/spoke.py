"""The spoke: carries its TAP's frames to the hub and back, and keeps trying to reach it.

The TAP stays up while the hub is away (frames read meanwhile are dropped and counted),
so local addresses, bridges and ARP entries survive a hub restart. Reconnects back off
exponentially with jitter, so a hub coming back is not hit by every spoke at once.
"""

import logging
import random

from l2vpn import pki
from l2vpn.errors import PKIError, TransportError
from l2vpn.node import Node
from l2vpn.transport import UP, Session, connect
from l2vpn.wire import CAP_VNET_HDR

log = logging.getLogger("l2vpn.spoke")

JITTER = 0.2


class Spoke(Node):
    role = "spoke"

    def __init__(self, cfg, loop=None, rng=None):
        super().__init__(cfg, loop)
        self.session = None
        self.rng = rng or random.Random()
        self.backoff_s = cfg.reconnect.initial_s
        self.next_attempt = None
        self.last_error = None
        self._retry_timer = None

    def _start(self):
        self.context = pki.spoke_context(self.cfg.tls, self.cfg.hub.server_name)
        self.tap = self.open_tap(self.cfg.tap, self.cfg.node, self._from_tap)
        self._closers.append(self._cancel_retry)
        self._connect()

    # -- connecting ------------------------------------------------------------------
    def _connect(self):
        self._retry_timer = None
        hub = self.cfg.hub
        try:
            sock, remote = connect(hub.address, hub.port)
        except TransportError as e:
            self._retry(str(e))
            return
        log.debug("connecting to hub at %s", remote)
        self.session = Session(
            self.loop, sock, remote, context=self.context, server_side=False,
            node=self.cfg.node, mtu=self.cfg.tap.mtu, server_hostname=hub.server_name,
            caps=CAP_VNET_HDR if hub.offload else 0,
            on_secure=self._on_secure, on_up=self._on_up, on_frame=self._from_hub,
            on_close=self._on_close)

    def _on_secure(self, session):
        try:
            session.cn = pki.peer_common_name(session.tls)
        except PKIError as e:
            return f"hub certificate unusable: {e}"
        return self.revoked(session)

    def peer_sessions(self) -> list:
        return [self.session] if self.session is not None else []

    def _on_up(self, session):
        if session.peer.mtu != self.cfg.tap.mtu:
            log.warning("hub has MTU %d, we have %d: frames above the smaller one will be "
                        "dropped", session.peer.mtu, self.cfg.tap.mtu)
        log.info("connected to hub %s at %s (%s)", session.name, session.remote,
                 "super-frames carried whole" if session.vnet else "plain frames")
        self.backoff_s = self.cfg.reconnect.initial_s
        self.last_error = None
        return None

    def _on_close(self, session, reason):
        if session is self.session:
            self.session = None
        if self.stopping:
            return
        if session.up_since is not None:
            log.warning("session with hub %s ended: %s", session.name, reason)
        self._retry(reason)

    def _retry(self, reason):
        self.last_error = reason
        delay = min(self.backoff_s, self.cfg.reconnect.max_s)
        delay *= 1 + self.rng.uniform(-JITTER, JITTER)
        self.backoff_s = min(self.backoff_s * 2, self.cfg.reconnect.max_s)
        log.warning("hub unreachable (%s); retrying in %.1f s", reason, delay)
        self.next_attempt = self.loop.clock() + delay
        self._retry_timer = self.loop.call_later(delay, self._connect)

    def _cancel_retry(self):
        if self._retry_timer is not None:
            self._retry_timer.cancel()

    # -- data path -------------------------------------------------------------------
    def _from_tap(self, port, frame):
        session = self.session
        if session is None or session.state != UP:
            port.drops += 1
            return
        session.send_frame(frame)
        if session.congested:
            port.pause()
            session.add_waiter(port)

    def _from_hub(self, session, frame):
        self.tap.send_frame(frame)

    def _tick(self):
        if self.session is not None:
            self.check_session_health(self.session, self.loop.clock())

    def _say_goodbye(self):
        self._cancel_retry()
        if self.session is not None:
            self.session.goodbye("spoke shutting down", linger_s=0.5)

    def status(self) -> dict:
        now = self.loop.clock()
        out = self.base_status()
        up = self.session is not None and self.session.state == UP
        out["sessions"] = [self.session.snapshot(now)] if up else []
        hub = {"address": f"{self.cfg.hub.address}:{self.cfg.hub.port}",
               "state": self.session.state if self.session is not None else "backoff"}
        if self.session is None and self.next_attempt is not None:
            hub["next_attempt_s"] = round(max(0.0, self.next_attempt - now), 3)
        if self.last_error:
            hub["last_error"] = self.last_error
        out["hub"] = hub
        return out
