"""The spoke: carries its TAP's frames to the hub and back, and keeps trying to reach it.

The TAP stays up while the hub is away (frames read meanwhile are dropped and counted),
so local addresses, bridges and ARP entries survive a hub restart. Reconnects back off
exponentially with jitter, so a hub coming back is not hit by every spoke at once.

When the hub sends its flood limits (LIMITS, see storm.py), broadcasts and multicasts
past them are dropped here, before they cost the hub anything; the hub's loop probes
have a bucket of their own (loopguard.PROBE_PPS, as at the hub), so a storm caused by a
loop cannot hide the loop.
"""

import logging
import random

from l2vpn import pki, storm
from l2vpn.errors import PKIError, TransportError
from l2vpn.logs import DropReports
from l2vpn.loopguard import PROBE_DST, PROBE_PPS
from l2vpn.node import Node
from l2vpn.offload import VNET_HDR_LEN
from l2vpn.transport import UP, Session
from l2vpn.wire import CAP_FLOOD_LIMITS, CAP_VNET_HDR

log = logging.getLogger("l2vpn.spoke")

HUB_PORT = "hub"   # the spoke's one port, as metrics and capture name it
JITTER = 0.2
REPORT_S = 10.0
_EXPLAIN = {"storm_broadcast": "broadcasts over the hub's limit of {0.broadcast_pps}/s",
            "storm_multicast": "multicasts over the hub's limit of {0.multicast_pps}/s",
            "probe_excess": f"frames to the loop-probe address over {PROBE_PPS}/s"}


class Spoke(Node):
    role = "spoke"

    def __init__(self, cfg, edges, loop=None, rng=None, notifier=None):
        super().__init__(cfg, edges, loop, notifier)
        self.session = None
        self.rng = rng or random.Random()
        self.backoff_s = cfg.reconnect.initial_s
        self.next_attempt = None
        self.last_error = None
        self.reconnects = 0       # retries scheduled after a failed attempt or a lost session
        self._retry_timer = None
        self.limiter = None       # storm.FloodLimiter while the hub's limits are in force
        self.limits = None        # wire.Limits the hub sent last, kept for the log
        self.flood_drops = dict.fromkeys(storm.LIMITER_DROPS, 0)   # across sessions
        self.drop_reports = DropReports(REPORT_S)

    def _start(self):
        self.context = self.make_context(self.cfg)
        self.tap = self.open_tap(self.cfg.tap, self.cfg.node, self._from_tap)
        self._closers.append(self._cancel_retry)
        self._connect()

    # -- connecting ------------------------------------------------------------------
    def _connect(self):
        self._retry_timer = None
        hub = self.cfg.hub
        try:
            sock, remote = self.edges.connect(hub.address, hub.port)
        except TransportError as e:
            self._retry(str(e))
            return
        log.debug("connecting to hub at %s", remote)
        self.session = Session(
            self.loop, sock, remote, context=self.context, server_side=False,
            node=self.cfg.node, mtu=self.cfg.tap.mtu, server_hostname=hub.server_name,
            caps=(CAP_VNET_HDR if hub.offload else 0)
            | (CAP_FLOOD_LIMITS if hub.flood_limits else 0),
            on_secure=self._on_secure, on_up=self._on_up, on_frame=self._from_hub,
            on_close=self._on_close, on_limits=self._on_limits)

    def make_context(self, cfg):
        return pki.spoke_context(cfg.tls, cfg.hub.server_name)

    def current_context(self):
        return self.context

    def _apply_config(self, old, prepared) -> None:
        self.context = prepared.context     # the next connection uses it
        if self.cfg.hub == old.hub:
            return
        log.info("hub settings changed: connecting to %s:%d afresh", self.cfg.hub.address,
                 self.cfg.hub.port)
        self.backoff_s = self.cfg.reconnect.initial_s
        if self.session is not None:
            self.session.close("hub settings changed by a reload", goodbye="reconnecting")
        else:
            self._cancel_retry()
            self._connect()

    def _on_secure(self, session):
        try:
            session.cn = pki.peer_common_name(session.tls)
        except PKIError as e:
            return f"hub certificate unusable: {e}"
        return self.revoked(session)

    def peer_sessions(self) -> list:
        return [self.session] if self.session is not None else []

    def ports(self) -> dict:
        """A spoke's one named port is its session with the hub, while it is up."""
        s = self.session
        return {HUB_PORT: s} if s is not None and s.state == UP else {}

    def _on_up(self, session):
        if session.peer.mtu != self.cfg.tap.mtu:
            log.warning("hub has MTU %d, we have %d: frames above the smaller one will be "
                        "dropped", session.peer.mtu, self.cfg.tap.mtu)
        log.info("connected to hub %s at %s (%s)", session.name, session.remote,
                 "super-frames carried whole" if session.vnet else "plain frames")
        self.backoff_s = self.cfg.reconnect.initial_s
        self.last_error = None
        self._port_up(HUB_PORT, session)
        return None

    def _on_limits(self, session, limits):
        self.limits = limits
        self.limiter = storm.FloodLimiter(limits.broadcast_pps, limits.multicast_pps,
                                          probe=PROBE_DST, probe_pps=PROBE_PPS,
                                          drops=self.flood_drops)
        log.info("hub %s accepts %s broadcasts/s and %s multicasts/s from this site; the "
                 "excess is dropped here", session.name, limits.broadcast_pps or "any",
                 limits.multicast_pps or "any")

    def _on_close(self, session, reason):
        if session is self.session:
            self.session = None
            self.limiter = None   # the next hub (or this one, restarted) sends its own
            if session.up_since is not None:
                self._port_down(HUB_PORT, session)
        if self.stopping:
            return
        if session.up_since is not None:
            log.warning("session with hub %s ended: %s", session.name, reason)
        self._retry(reason)

    def _retry(self, reason):
        self.last_error = reason
        self.reconnects += 1
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
        limiter = self.limiter
        if (limiter is not None and len(frame) > VNET_HDR_LEN and frame[VNET_HDR_LEN] & 1
                and not limiter.admit(frame, VNET_HDR_LEN, self.loop.clock())):
            return      # a flood past the hub's limits (the clock is read for floods only)
        session.send_frame(frame)
        if session.congested:
            port.pause()
            session.add_waiter(port)

    def _from_hub(self, session, frame):
        self.tap.send_frame(frame)

    def _tick(self):
        now = self.loop.clock()
        if self.session is not None:
            self.check_session_health(self.session, now)
        self.drop_reports.update("tap", self.flood_drops)
        for _tap, counts in self.drop_reports.due(now):
            log.warning("TAP %s: dropped %s before sending them to the hub",
                        self.tap.device.name, "; ".join(
                            f"{n} {_EXPLAIN[r].format(self.limits)}" for r, n in counts.items()))

    def _say_goodbye(self):
        self._cancel_retry()
        if self.session is not None:
            self.session.goodbye("spoke shutting down", linger_s=0.5)

    def summary(self) -> str:
        hub = f"hub {self.cfg.hub.address}:{self.cfg.hub.port}"
        if self.session is not None and self.session.state == UP:
            return f"connected to {hub}"
        if self.session is not None:
            return f"{hub}: {self.session.state}"
        return f"{hub}: not connected ({self.last_error or 'starting'})"

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
        lim = self.limiter
        out["flood_limits"] = None if lim is None else {
            "broadcast_pps": lim.broadcast_pps, "multicast_pps": lim.multicast_pps}
        out["flood_drops"] = dict(self.flood_drops)
        return out
