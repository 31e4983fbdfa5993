"""What hub and spoke share: the TAP as a port, the management socket, signals, ticks,
the certificate revocation list and the drop of privileges.

A `Node` is wired once by the CLI and then driven by its event loop. Subclasses say what
a frame read from the TAP or a session means; this module owns start-up order (the
things most likely to fail first) and a shutdown that undoes all of it.

Revocation: with `tls.crl` set, the peer's certificate serial is checked once its TLS
handshake completes, before the hello. The CRL is read again on a reload (SIGHUP,
`l2vpn reload`: see reload.py) and whenever the file changes (checked every tick);
sessions whose certificate it now lists are ended, the others are not touched. A CRL
that fails to load keeps the previous one.
"""

import datetime as dt
import logging
import os
import signal
import time

from l2vpn import logs, metrics, pki, privilege
from l2vpn import reload as config_reload
from l2vpn.tap import describe_offloads
from l2vpn.errors import ConfigError, PKIError
from l2vpn.frame import format_mac
from l2vpn.logs import RateLimitedLog
from l2vpn.offload import PLAIN_HDR, VNET_HDR_LEN, needs_work
from l2vpn.eventloop import READ, EventLoop
from l2vpn.lifecycle import CLOSED, HELLO
from l2vpn.port import FlowControl
from l2vpn.transport import REVOKED, UP, plain_frames

log = logging.getLogger("l2vpn.node")

TAP_BUDGET = 256
TICK_S = 1.0
GOODBYE_WAIT_S = 0.5    # at most, at stop, for the goodbyes to leave
GOODBYE_POLL_S = 0.01


class TapPort(FlowControl):
    """The local TAP as a switch port (port.Port): reads feed `on_frame`, writes go
    straight to the kernel.

    Frames inside a node always lead with a virtio-net header. A TAP opened with it passes
    super-frames both ways untouched (the kernel segments what it is given); a plain TAP
    gets a zero header added to what it reads and has super-frames and partial checksums
    finished in software before they are written.
    """

    congested = False   # a write goes straight to the kernel: nothing queues here

    def __init__(self, loop, device, name, on_frame):
        super().__init__(loop, RateLimitedLog(log))
        self.device = device
        self.name = name
        self.fd = device.fd
        self.vnet = device.vnet_hdr
        self.on_frame = on_frame
        self.frames_in = self.frames_out = self.bytes_in = self.bytes_out = 0
        self.drops = self.soft_offloads = self.offload_errors = 0
        loop.watch(self.fd, READ, self._on_readable)

    def _on_readable(self, _mask):
        # on_frame is read afresh at every read: a wrapper may have replaced it
        fd, on_frame, read, size = self.fd, self.on_frame, os.read, self.device.read_size
        plain = not self.vnet
        for _ in range(TAP_BUDGET):
            if self.paused:
                return
            try:
                frame = read(fd, size)
            except BlockingIOError:
                return
            except OSError as e:
                log.error("reading TAP %s failed: %s", self.device.name, e)
                return
            self.frames_in += 1
            self.bytes_in += len(frame)
            on_frame(self, PLAIN_HDR + frame if plain else frame)

    def send_frame(self, frame) -> None:
        """Write one frame (vnet form); a plain TAP gets it segmented and checksummed."""
        if self.vnet:
            self._write(frame)
        elif needs_work(frame):
            for f in plain_frames(self, frame, f"TAP {self.device.name}"):
                self._write(f)
        else:
            self._write(memoryview(frame)[VNET_HDR_LEN:])

    def _write(self, frame) -> None:
        try:
            os.write(self.fd, frame)
        except OSError:
            # The kernel refuses when the link is down or its queue is full: a switch drops.
            self.drops += 1
            return
        self.frames_out += 1
        self.bytes_out += len(frame)

    def _pause_io(self):
        self.loop.watch(self.fd, 0, None)

    def _resume_io(self):
        self.loop.watch(self.fd, READ, self._on_readable)
        self.loop.again(self.fd, self._on_readable)

    def snapshot(self, now: float | None = None) -> dict:
        """What `status` shows of the TAP; `now` is not needed (a TAP has no uptime)."""
        return {"name": self.device.name, "mac": format_mac(self.device.mac),
                "mtu": self.device.mtu, "frames_in": self.frames_in,
                "frames_out": self.frames_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "drops": self.drops,
                "offload": self.device.offloads != 0, "soft_offloads": self.soft_offloads,
                "offload_errors": self.offload_errors}

    def close(self, reason: str = "") -> None:
        """Stop reading and close the device; `reason` is unused (a TAP has no peer)."""
        self._release_waiters()
        self.loop.forget(self.fd)
        self.device.close()


class Node:
    """Lifecycle shared by hub and spoke; subclasses fill in `_start` and `status`."""

    role = "node"

    def __init__(self, cfg, edges, loop=None, notifier=None):
        self.cfg = cfg
        self.edges = edges        # edges.Edges: what it opens on the host (cli: edges.REAL)
        self._own_loop = loop is None   # several nodes may share a test's loop
        self.loop = loop or EventLoop()
        self.notifier = notifier  # sdnotify.Notifier under systemd (Type=notify), else None
        self.started = self.loop.clock()
        self.tap = None
        self.management = None
        self._closers = []
        self.stopping = False
        self.revocations = None   # pki.Revocations when tls.crl is set
        self._crl_stamp = None
        self.identity = None      # privilege.Identity when user: is set
        self.metrics_registry = None   # made on the first scrape or `metrics` request
        self.metrics_server = None     # metrics.MetricsServer when metrics.listen is set
        self.tls_fingerprints = {}     # tls key -> hash of its file as last loaded
        self.last_reload_ok = True     # for l2vpn_config_last_reload_successful
        self.last_reload_success_s = time.time()   # Unix time: the start counts as one
        # Told of every named port that comes or goes: `port_up(name, port)` and
        # `port_down(name, port)` (capture follows the ports it was asked for this way).
        self.port_watchers = []

    def open_tap(self, tap_cfg, port_name, on_frame) -> TapPort:
        device = self.edges.tap(tap_cfg, self.cfg.node)
        port = TapPort(self.loop, device, port_name, on_frame)
        self._closers.append(port.close)
        log.info("TAP %s up: mtu %d, mac %s, offloads %s%s%s", device.name, device.mtu,
                 format_mac(device.mac), describe_offloads(device.offloads),
                 f", address {tap_cfg.address}" if tap_cfg.address else "",
                 f", bridged into {tap_cfg.bridge}" if tap_cfg.bridge else "")
        return port

    def start(self):
        """Open everything, then drop privileges; on any failure close what was opened
        and re-raise."""
        try:
            if self.cfg.user is not None:   # an unknown user fails before anything opens
                self.identity = privilege.resolve_config(self.cfg)
            if self.cfg.tls.crl is not None:
                self.revocations = pki.load_crl(self.cfg.tls.crl, self.cfg.tls.ca)
                self._crl_stamp = _stamp(self.cfg.tls.crl)
                self._warn_crl_expiry()
            self._start()
            self.management = self.edges.management(self.loop, self.cfg.management.socket,
                                                    self._request)
            self._closers.append(self.management.close)
            listen = self.cfg.metrics.listen
            if listen is not None:   # before the privilege drop: a port < 1024 needs root
                self.metrics_server = self.edges.metrics(self.loop, listen.host,
                                                         listen.port, self.metrics_text)
                log.info("metrics on http://%s/metrics", listen)
            self._closers.append(self._close_metrics)
            if self.edges.signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    self.loop.on_signal(signum,
                                        lambda s=signum: self.stop(signal.Signals(s).name))
                self.loop.on_signal(signal.SIGHUP, lambda: self.reload("SIGHUP"))
            logs.set_level(self.cfg.log.level)
            self.tls_fingerprints = config_reload.fingerprints(self.cfg.tls)
            self.loop.call_every(TICK_S, self._tick_all)
            if self.identity is not None:
                self._drop_privileges()
        except BaseException:
            self.close()
            raise
        if self.notifier is not None:
            self._closers.append(self.notifier.close)
            self.notifier.ready(self.summary())
            if self.notifier.watchdog_s:    # pinged from the loop: a wedged loop stops it
                self.loop.call_every(self.notifier.watchdog_s / 2, self.notifier.watchdog)

    def _drop_privileges(self):
        # Undoing a bridge address at exit is netlink work; nothing else after start is.
        keep = (privilege.CAP_NET_ADMIN,) if self.tap is not None and \
            self.tap.device.needs_net_admin_at_close else ()
        # Modules Python loads on first use must be loaded now: the interpreter's own
        # files may not be readable by the user we become (a Python under /root).
        import encodings.idna  # noqa: F401  (getaddrinfo of a host name)
        privilege.drop(self.identity, keep)
        if self.cfg.tls.crl is not None:
            # The CRL is re-read after the drop: find out now if the user cannot.
            try:
                pki.load_crl(self.cfg.tls.crl, self.cfg.tls.ca)
            except PKIError as e:
                raise ConfigError(
                    f"{self.cfg.path}: tls.crl: {e}; user {self.identity.user} must be able "
                    f"to read it to apply revocations (chmod 644 the file and o+x its "
                    f"folders, or keep it elsewhere)") from None
        log.info("running as user %s, group %s%s", self.identity.user, self.identity.group,
                 " with CAP_NET_ADMIN (to remove the bridge address at exit)" if keep
                 else " with no capabilities")

    def _tick_all(self):
        if self.cfg.tls.crl is not None:
            stamp = _stamp(self.cfg.tls.crl)
            if stamp != self._crl_stamp:
                self._crl_stamp = stamp
                if isinstance(stamp, str):
                    log.error("cannot watch the CRL %s: %s; keeping the revocations read "
                              "last", self.cfg.tls.crl, stamp)
                else:
                    self._reload_crl(f"{self.cfg.tls.crl} changed")
        self._tick()
        if self.notifier is not None:
            self.notifier.status(self.summary())

    def _close_metrics(self):
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None

    # -- reload ----------------------------------------------------------------------
    def reload(self, why: str) -> dict:
        """Read the config and its TLS files again and apply them live, or change nothing
        and say why (see reload.py); the answer is what `l2vpn reload` prints."""
        if self.notifier is not None:
            self.notifier.reloading()
        try:
            prepared = config_reload.prepare(self)
        except ConfigError as e:
            self.last_reload_ok = False
            for line in e.problems:
                log.error("reload (%s): %s; keeping the previous config", why, line)
            outcome = {"ok": False, "problems": list(e.problems)}
        else:
            self._apply_reload(prepared, why)
            outcome = prepared.outcome()
        if self.notifier is not None:
            self.notifier.ready(self.summary())
        return outcome

    def _apply_reload(self, prepared, why: str) -> None:
        old, cfg = self.cfg, prepared.cfg
        self.cfg = cfg
        self.tls_fingerprints = prepared.fingerprints
        logs.set_level(cfg.log.level)
        if cfg.metrics.listen != old.metrics.listen:
            self._close_metrics()
            self.metrics_server = prepared.metrics_server
            log.info("metrics %s", f"on http://{cfg.metrics.listen}/metrics"
                     if cfg.metrics.listen else "off")
        self._apply_config(old, prepared)
        self._crl_stamp = _stamp(cfg.tls.crl) if cfg.tls.crl is not None else None
        self._use_revocations(prepared.revocations, why)
        for session in self.peer_sessions() if prepared.trust is not None else ():
            if session.state in (HELLO, UP):
                problem = prepared.trust.problem(session.tls, None)
                if problem:
                    log.warning("%s %s: %s: ending its session", self._peer_kind,
                                session.cn or session.remote, problem)
                    session.close(f"certificate no longer accepted: {problem}",
                                  goodbye="certificate no longer accepted")
        self.last_reload_ok = True
        self.last_reload_success_s = time.time()
        log.info("reload (%s): %s%s", why,
                 f"applied {', '.join(prepared.changed)}" if prepared.changed
                 else "nothing changed",
                 f"; needs a restart (old values kept): {', '.join(prepared.needs_restart)}"
                 if prepared.needs_restart else "")

    @property
    def _peer_kind(self) -> str:
        return "spoke" if self.role == "hub" else "hub"

    # -- revocation ------------------------------------------------------------------
    def _reload_crl(self, why: str) -> None:
        """Read the CRL again and end sessions whose certificate it now lists."""
        if self.cfg.tls.crl is None:
            return
        try:
            revocations = pki.load_crl(self.cfg.tls.crl, self.cfg.tls.ca)
        except PKIError as e:
            log.error("reload (%s): %s; keeping the previous CRL", why, e)
            return
        self._use_revocations(revocations, why)

    def _use_revocations(self, revocations, why: str) -> None:
        self.revocations = revocations
        if revocations is None:
            return
        log.info("reload (%s): %s lists %d revoked certificates", why, self.cfg.tls.crl,
                 len(revocations.serials))
        self._warn_crl_expiry()
        for session in self.peer_sessions():
            serial = getattr(session, "serial", None)
            if serial is not None and revocations.is_revoked(serial):
                log.warning("%s %s: certificate (serial 0x%x) is now revoked: ending its "
                            "session", "spoke" if self.role == "hub" else "hub",
                            session.cn or session.remote, serial)
                session.close("certificate revoked", goodbye="certificate revoked")

    def revoked(self, session) -> str | None:
        """Why the peer's certificate is refused, or None; remembers its serial."""
        try:
            session.serial = pki.peer_serial(session.tls)
        except PKIError as e:
            return f"refused: {e}"
        if self.revocations is not None and self.revocations.is_revoked(session.serial):
            session.failure = REVOKED
            return (f"refused: certificate of {session.cn or session.remote} (serial "
                    f"0x{session.serial:x}) is revoked by {self.cfg.tls.crl}")
        return None

    def _warn_crl_expiry(self):
        problem = self.revocations.expiry_problem(dt.datetime.now(dt.timezone.utc))
        if problem:
            log.warning("%s", problem)

    def run(self) -> None:
        try:
            self.loop.run()
        finally:
            self.close()

    def stop(self, why: str) -> None:
        """Say goodbye to every peer, then end the loop once the goodbyes have left: the
        loop sends them. A session still closing after GOODBYE_WAIT_S is closed then."""
        if not self.stopping:
            self.stopping = True
            log.info("stopping (%s)", why)
            if self.notifier is not None:
                self.notifier.stopping(why)
            sessions = self.peer_sessions()
            self._say_goodbye()
            deadline = self.loop.clock() + GOODBYE_WAIT_S

            def stop_once_said():
                if self.loop.clock() < deadline and any(s.state != CLOSED for s in sessions):
                    self.loop.call_later(GOODBYE_POLL_S, stop_once_said)
                    return
                for s in sessions:
                    if s.state != CLOSED:
                        s.close(s.close_reason or f"stopping ({why})")
                self.loop.stop()
            stop_once_said()

    def close(self) -> None:
        while self._closers:
            fn = self._closers.pop()
            try:
                fn()
            except Exception as e:  # teardown keeps going: each step is independent
                log.warning("cleanup step failed: %s", e)
        if self._own_loop:
            self.loop.close()

    def _request(self, command: str) -> dict:
        if command == "status":
            return self.status_reply()
        if command == "metrics":
            return {"metrics": self.metrics_text().decode()}
        if command == "reload":
            return self.reload("l2vpn reload")
        verb, _, rest = command.partition(" ")
        if verb == "capture":   # a Stream of pcapng, or an error dict
            from l2vpn import capture
            return capture.serve(self, rest)
        return {"error": f"unknown request {command!r} (try: status, metrics, reload, capture)"}

    def metrics_text(self) -> bytes:
        """The Prometheus text format of this node, read from its live state now."""
        if self.metrics_registry is None:
            self.metrics_registry = metrics.make_registry(self)
        return metrics.render(self.metrics_registry)

    def base_status(self) -> dict:
        now = self.loop.clock()
        out = {"node": self.cfg.node, "role": self.role,
               "uptime_s": round(now - self.started, 3)}
        if self.tap is not None:
            out["tap"] = self.tap.snapshot()
        return out

    def check_session_health(self, session, now) -> None:
        """Keepalives out; drop a peer that is silent or does not read for timeout_s."""
        ka = self.cfg.keepalive
        if session.state != UP:
            return
        if not session.paused and now - session.last_rx > ka.timeout_s:
            session.close(f"peer silent for {now - session.last_rx:.0f} s", goodbye="timeout")
        elif session.buffered and now - session.last_tx > ka.timeout_s:
            session.close(f"peer has not read for {now - session.last_tx:.0f} s")
        elif now - session.last_tx >= ka.interval_s:
            session.send_keepalive()

    # -- named ports ------------------------------------------------------------------
    def _port_up(self, name, port) -> None:
        for w in list(self.port_watchers):
            w.port_up(name, port)

    def _port_down(self, name, port) -> None:
        for w in list(self.port_watchers):
            w.port_down(name, port)

    # subclasses
    def make_context(self, cfg):
        """The ssl.SSLContext for new handshakes under `cfg`."""
        raise NotImplementedError

    def current_context(self):
        """The ssl.SSLContext new handshakes use now."""
        raise NotImplementedError

    def _apply_config(self, old, prepared) -> None:
        """Apply what a reload changed to the subclass's parts (self.cfg is new already)."""
        raise NotImplementedError

    def ports(self) -> dict:
        """The named ports now: name -> port (see port.py)."""
        raise NotImplementedError

    def peer_sessions(self) -> list:
        return []

    def _start(self):
        raise NotImplementedError

    def _tick(self):
        raise NotImplementedError

    def _say_goodbye(self):
        raise NotImplementedError

    def status(self) -> dict:
        raise NotImplementedError

    def status_reply(self):
        """What a `status` request is answered with: the document, or a Stream of it."""
        return self.status()

    def summary(self) -> str:
        """One line for `systemctl status`; cheap, since it is asked every tick."""
        raise NotImplementedError


def _stamp(path):
    """What tells a changed file apart: inode, size and modification time; or why the
    file cannot be looked at."""
    try:
        st = os.stat(path)
    except OSError as e:
        return e.strerror or str(e)
    return (st.st_ino, st.st_size, st.st_mtime_ns)

