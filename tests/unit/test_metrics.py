"""metrics.py: the collector over hubs and spokes built with fakes, the HTTP responder on a
real loop, the hub's handshake-failure counts over loopback TLS, and metrics.listen."""

import re
import socket
import ssl
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from fakes import (FakeClock, edges, FakeSession, call_in_thread, eth, hub_config, run_bounded,
                   run_until)
from fakes import metric_samples as samples

from l2vpn import __version__, config, metrics, pki, tcp, transport, wire
from l2vpn.config import (
    HubConfig,
    HubEndpoint,
    KeepaliveConfig,
    ListenConfig,
    ManagementConfig,
    ReconnectConfig,
    SpokeConfig,
    SwitchConfig,
    TapConfig,
    TLSConfig,
)
from l2vpn.errors import ConfigError, TransportError
from l2vpn.frame import BROADCAST
from l2vpn.edges import REAL
from l2vpn.hub import Hub
from l2vpn.eventloop import EventLoop
from l2vpn.spoke import Spoke
from l2vpn.switch import DROPS

MAC_RE = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", re.I)


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, 0, n])


def value(got: dict, name: str, **labels):
    return got[(name, tuple(sorted(labels.items())))]


class FakeTap:
    """The hub's own TAP as the collector sees it: a port with counters."""

    name = "hub"
    congested = stalled = paused = False

    def __init__(self):
        self.frames_in, self.frames_out, self.bytes_in, self.bytes_out = 7, 8, 700, 800
        self.sent = []

    def send_frame(self, frame):
        self.sent.append(bytes(frame))


def up_session(hub, cn, clock, up_s=12.0):
    s = FakeSession(cn, up_since=clock.now - up_s)
    s.frames_in = s.bytes_in = 0
    assert hub.admission.on_up(s) is None
    return s


@pytest.fixture
def clock():
    return FakeClock(1000.0)


@pytest.fixture
def hub(tmp_path, clock):
    cfg = hub_config(tmp_path, port=0)
    loop = EventLoop(clock=clock)
    h = Hub(cfg, edges(), loop=loop)
    yield h
    loop.close()


@pytest.fixture
def spoke(tmp_path, clock):
    cfg = SpokeConfig(
        path=tmp_path / "spoke.yaml", node="site-a", hub=HubEndpoint("198.18.0.1"),
        tls=TLSConfig(Path("ca.crt"), Path("site-a.crt"), Path("site-a.key")),
        tap=TapConfig("l2vpn0"), management=ManagementConfig(tmp_path / "spoke.sock"),
        keepalive=KeepaliveConfig(), reconnect=ReconnectConfig())
    loop = EventLoop(clock=clock)
    s = Spoke(cfg, edges(), loop=loop)
    yield s
    loop.close()


# -- the collector -----------------------------------------------------------------------


def test_hub_metrics_follow_the_contract(hub, clock):
    tap = FakeTap()
    hub.tap = tap
    hub.bridge.add_port(tap, "hub", 1500)
    a = up_session(hub, "site-a", clock, up_s=12.0)
    b = up_session(hub, "site-b", clock, up_s=3.0)
    a.frames_in, a.bytes_in = 5, 500
    hub.bridge.forward(a, eth(BROADCAST, mac(1)))           # learns mac 1 on site-a, floods
    hub.bridge.forward(b, eth(mac(1), mac(2)))              # learns mac 2 on site-b, forwards
    hub.bridge.forward(a, eth(mac(2), BROADCAST))           # a group source: dropped
    hub.bridge.forward(tap, eth(BROADCAST, mac(3)))         # learns mac 3 on hub
    clock.advance(10)                                 # past the move hold-down
    hub.bridge.forward(b, eth(BROADCAST, mac(1)))           # mac 1 moves to site-b
    hub.bridge.send_probes()                                # one probe out of each port
    hub.switch.block(b)
    hub.admission.handshakes = 4
    hub.admission.handshake_failures["expired"] = 2

    text = hub.metrics_text().decode()
    got = samples(text)
    assert value(got, "l2vpn_build_info", version=__version__) == 1
    assert abs(value(got, "l2vpn_start_time_seconds") - time.time()) < 60
    assert value(got, "l2vpn_sessions") == 2
    assert value(got, "l2vpn_handshakes_total") == 4
    assert {r: value(got, "l2vpn_handshake_failures_total", reason=r)
            for r in transport.FAILURES} == {
        "no_certificate": 0, "untrusted": 0, "revoked": 0, "expired": 2,
        "name_mismatch": 0, "timeout": 0, "protocol": 0, "not_listed": 0}
    assert value(got, "l2vpn_config_last_reload_successful") == 1
    assert value(got, "l2vpn_config_last_reload_success_timestamp_seconds") > 0
    for port, fin, fout in (("hub", 7, 8), ("site-a", 5, a.frames_out),
                            ("site-b", 0, b.frames_out)):
        assert value(got, "l2vpn_port_receive_frames_total", port=port) == fin
        assert value(got, "l2vpn_port_transmit_frames_total", port=port) == fout
        assert ("l2vpn_port_receive_bytes_total", (("port", port),)) in got
        assert ("l2vpn_port_transmit_bytes_total", (("port", port),)) in got
        for reason in DROPS:
            assert ("l2vpn_port_drops_total", (("port", port), ("reason", reason))) in got
    assert a.frames_out == 4        # b's unicast, two floods and a probe
    assert value(got, "l2vpn_port_transmit_bytes_total", port="site-a") == a.bytes_out
    assert value(got, "l2vpn_port_drops_total", port="site-a", reason="group_source") == 1
    assert value(got, "l2vpn_port_up_seconds", port="site-a") == pytest.approx(22.0)
    assert value(got, "l2vpn_port_up_seconds", port="site-b") == pytest.approx(13.0)
    assert value(got, "l2vpn_port_macs", port="hub") == 1
    assert value(got, "l2vpn_port_macs", port="site-a") == 0   # mac 1 moved away
    assert value(got, "l2vpn_port_macs", port="site-b") == 0   # flushed by the block
    assert value(got, "l2vpn_port_blocked", port="site-b") == 1
    assert value(got, "l2vpn_port_blocked", port="site-a") == 0
    assert value(got, "l2vpn_mac_table_entries") == 1
    assert value(got, "l2vpn_mac_moves_total") == 1
    assert value(got, "l2vpn_loop_probes_sent_total") == 3
    assert not MAC_RE.search(text), "a MAC address in the scrape"
    assert "127.0.0.1" not in text and "192.0.2.1" not in text
    assert "process_cpu_seconds_total" in text and "python_info" in text
    assert "l2vpn_hub_connected" not in text


def test_hub_without_tap_or_loop_detection_still_answers(hub, clock):
    hub.bridge.loop_detector = None
    got = samples(hub.metrics_text().decode())
    assert value(got, "l2vpn_sessions") == 0
    assert value(got, "l2vpn_loop_probes_sent_total") == 0
    assert not [k for k in got if k[0].startswith("l2vpn_port_")]


def test_spoke_metrics_follow_the_contract(spoke, clock):
    s = FakeSession("hub", up_since=clock.now - 30)
    s.frames_in, s.bytes_in = 11, 1100
    s.frames_out, s.bytes_out = 9, 900
    spoke.session = s
    spoke.reconnects = 2
    spoke.flood_drops.update(storm_broadcast=4, storm_multicast=5, probe_excess=6)
    text = spoke.metrics_text().decode()
    got = samples(text)
    assert value(got, "l2vpn_build_info", version=__version__) == 1
    assert value(got, "l2vpn_hub_connected") == 1
    assert value(got, "l2vpn_hub_reconnects_total") == 2
    assert {c: value(got, "l2vpn_flood_limited_total", **{"class": c})
            for c in ("broadcast", "multicast", "probe")} == {
        "broadcast": 4, "multicast": 5, "probe": 6}
    assert value(got, "l2vpn_port_receive_frames_total", port="hub") == 11
    assert value(got, "l2vpn_port_transmit_frames_total", port="hub") == 9
    assert value(got, "l2vpn_port_receive_bytes_total", port="hub") == 1100
    assert value(got, "l2vpn_port_transmit_bytes_total", port="hub") == 900
    assert value(got, "l2vpn_port_up_seconds", port="hub") == pytest.approx(30.0)
    assert "l2vpn_sessions" not in text and "l2vpn_mac_table_entries" not in text

    spoke.session = None
    got = samples(spoke.metrics_text().decode())
    assert value(got, "l2vpn_hub_connected") == 0
    assert not [k for k in got if k[0].startswith("l2vpn_port_")]


def test_a_retry_counts_as_a_reconnect(spoke):
    spoke._retry("refused")
    spoke._cancel_retry()
    assert spoke.reconnects == 1


def test_the_management_request_answers_the_same_text(hub):
    reply = hub._request("metrics")
    assert "l2vpn_sessions 0.0" in reply["metrics"]
    assert "metrics" in hub._request("nonsense")["error"]


def test_each_registry_is_the_nodes_own(hub, spoke):
    from prometheus_client import REGISTRY
    hub.metrics_text()
    assert hub.metrics_registry is not REGISTRY
    assert "l2vpn_build_info" not in metrics.render(REGISTRY).decode()


def test_the_cli_verb_prints_the_text(loop, tmp_path, capsys):
    from l2vpn import cli
    from l2vpn.management import ManagementServer
    text = "l2vpn_sessions 3.0\n"
    mgmt = ManagementServer(loop, tmp_path / "n.sock",
                            lambda cmd: {"metrics": text} if cmd == "metrics" else {})
    try:
        rc = call_in_thread(loop, lambda: cli.main(["metrics", "-s", str(tmp_path / "n.sock")]))
    finally:
        mgmt.close()
    assert rc == 0 and capsys.readouterr().out == text


# -- the HTTP responder ------------------------------------------------------------------


def http(port: int, request: bytes, rcvbuf: int | None = None, pause_s: float = 0) -> bytes:
    with socket.socket() as c:
        if rcvbuf:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        c.settimeout(5)
        c.connect(("127.0.0.1", port))
        c.sendall(request)
        time.sleep(pause_s)
        chunks = []
        while chunk := c.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def server(loop):
    srv = metrics.MetricsServer(loop, "127.0.0.1", 0, lambda: b"l2vpn_test 1\n")
    yield srv
    srv.close()


def test_get_metrics_answers_the_text_format(loop, server):
    port = server.address[1]
    reply = call_in_thread(loop, lambda: http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                                                    b"Accept: */*\r\n\r\n"))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n" in head
    assert b"Content-Length: 13\r\n" in head
    assert body == b"l2vpn_test 1\n"
    assert server.clients == {}


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\n\r\n", b"404"),
    (b"GET /metricsx HTTP/1.0\r\n\r\n", b"404"),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
    (b"garbage\r\n\r\n", b"400"),
    # exactly one byte past the cap: all of it read, so the close sends no reset
    (b"GET /metrics HTTP/1.1\r\nX: ".ljust(metrics.MAX_REQUEST_B + 1, b"a"), b"431"),
])
def test_other_requests_get_a_status_and_a_close(loop, server, request_bytes, status):
    port = server.address[1]
    reply = call_in_thread(loop, lambda: http(port, request_bytes))
    assert reply.startswith(b"HTTP/1.1 " + status + b" ")
    assert server.clients == {}


def test_a_query_string_and_head_are_fine(loop, server):
    port = server.address[1]
    assert call_in_thread(loop, lambda: http(port, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n")) \
        .endswith(b"\r\n\r\nl2vpn_test 1\n")
    head = call_in_thread(loop, lambda: http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n"))
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"Content-Length: 13\r\n"
                                                              b"Connection: close\r\n\r\n")


def test_a_slow_request_does_not_block_the_loop_and_times_out(loop):
    srv = metrics.MetricsServer(loop, "127.0.0.1", 0, lambda: b"x 1\n", timeout_s=0.3)
    try:
        c = socket.create_connection(srv.address, timeout=5)
        c.sendall(b"GET /metr")                      # and nothing more
        fired = []
        loop.call_later(0.05, lambda: fired.append(loop.clock()))
        loop.call_later(0.1, loop.stop)
        run_bounded(loop, timeout_s=2)
        assert fired and len(srv.clients) == 1       # the timer ran while it waits
        run_until(loop, lambda: not srv.clients, what="the slow client to be dropped")
        assert c.recv(100) == b""                    # closed without an answer
        c.close()
    finally:
        srv.close()


def test_a_large_reply_to_a_slow_reader_waits_for_writability(loop):
    body = b"# " + b"x" * (16 << 20) + b"\n"
    srv = metrics.MetricsServer(loop, "127.0.0.1", 0, lambda: body)
    ticks = []
    handle = loop.call_every(0.01, lambda: ticks.append(1))
    try:
        port = srv.address[1]
        reply = call_in_thread(loop, lambda: http(port, b"GET /metrics HTTP/1.1\r\n\r\n",
                                                  rcvbuf=4096, pause_s=0.3), timeout_s=20)
        assert reply.endswith(body) and len(reply) < len(body) + 200
        assert len(ticks) >= 10                      # the loop kept running meanwhile
    finally:
        handle.cancel()
        srv.close()


def test_a_port_in_use_is_one_clear_error(loop, server):
    with pytest.raises(TransportError, match="port already in use; .*metrics.listen"):
        metrics.MetricsServer(loop, "127.0.0.1", server.address[1], lambda: b"")


def test_ipv6_loopback_works(loop):
    try:
        srv = metrics.MetricsServer(loop, "::1", 0, lambda: b"x 1\n")
    except TransportError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        def get():
            with socket.create_connection(("::1", srv.address[1]), timeout=5) as c:
                c.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
                return c.recv(4096)
        assert call_in_thread(loop, get).endswith(b"x 1\n")
    finally:
        srv.close()


# -- handshake failures, counted by the hub ----------------------------------------------


@pytest.fixture
def live_hub(tmp_path, fresh_ca, loop):
    tls = TLSConfig(fresh_ca / "ca.crt", fresh_ca / "hub.crt", fresh_ca / "hub.key")
    cfg = HubConfig(
        path=tmp_path / "hub.yaml", node="hub", listen=ListenConfig("127.0.0.1", 0), tls=tls,
        tap=None, switch=SwitchConfig(), management=ManagementConfig(tmp_path / "hub.sock"),
        keepalive=KeepaliveConfig())
    h = Hub(cfg, REAL, loop=loop)
    h._start()
    yield h
    h.admission.listener.close()
    for s in list(h.sessions.values()) + list(h.admission.pending):
        s.close("test over")


def client_context(ca_dir, name=None, cert_dir=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=str(ca_dir / "ca.crt"))
    if name:
        d = cert_dir or ca_dir
        ctx.load_cert_chain(str(d / f"{name}.crt"), str(d / f"{name}.key"))
    return ctx


def talk(hub, ctx, send: bytes = b"", tls: bool = True):
    """Connect to the hub, handshake (or not), send, and read until it closes."""
    port = hub.admission.listener.getsockname()[1]

    def client():
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            try:
                conn = ctx.wrap_socket(raw) if tls else raw
                if send:
                    conn.sendall(send)
                while conn.recv(4096):
                    pass
            except (ssl.SSLError, OSError):
                pass
    return call_in_thread(hub.loop, client)


def failures(hub) -> dict:
    return {k: v for k, v in hub.admission.handshake_failures.items() if v}


def wait_failures(hub, expected):
    run_until(hub.loop, lambda: failures(hub) == expected, what=f"failures {expected}")


def test_handshake_failures_are_classified(live_hub, fresh_ca, tmp_path, monkeypatch):
    hub = live_hub
    assert set(hub.admission.handshake_failures) == set(transport.FAILURES)
    talk(hub, client_context(fresh_ca))                       # no client certificate
    wait_failures(hub, {"no_certificate": 1})

    rogue = tmp_path / "rogue"
    pki.init_ca(rogue)
    pki.issue(rogue, "site-a", "spoke")
    talk(hub, client_context(fresh_ca, "site-a", cert_dir=rogue))
    wait_failures(hub, {"no_certificate": 1, "untrusted": 1})

    monkeypatch.setattr(pki, "BACKDATE", pki.BACKDATE * 1000)   # about 3 days
    pki.issue(fresh_ca, "old", "spoke", days=-1)
    talk(hub, client_context(fresh_ca, "old"))
    wait_failures(hub, {"no_certificate": 1, "untrusted": 1, "expired": 1})

    other = wire.Connection("site-b", 1500)                   # site-a's certificate
    talk(hub, client_context(fresh_ca, "site-a"), send=other.hello())
    wait_failures(hub, {"no_certificate": 1, "untrusted": 1, "expired": 1,
                        "name_mismatch": 1})

    hub.revocations = SimpleNamespace(is_revoked=lambda serial: True)
    talk(hub, client_context(fresh_ca, "site-a"))
    hub.revocations = None
    wait_failures(hub, {"no_certificate": 1, "untrusted": 1, "expired": 1,
                        "name_mismatch": 1, "revoked": 1})

    talk(hub, None, send=b"GET / HTTP/1.0\r\n\r\n", tls=False)  # plaintext
    wait_failures(hub, {"no_certificate": 1, "untrusted": 1, "expired": 1,
                        "name_mismatch": 1, "revoked": 1, "protocol": 1})

    hub.admission.thresholds = transport.Thresholds(handshake_timeout_s=0.05)
    port = hub.admission.listener.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port), timeout=5):   # never speaks
        run_until(hub.loop, lambda: hub.admission.handshake_failures["timeout"] == 1,
                  what="the handshake timeout")
    assert hub.admission.handshakes == 7
    assert hub.metrics_text().decode().count('l2vpn_handshake_failures_total{reason=') == 8


def test_a_good_spoke_is_a_handshake_but_no_failure(live_hub, fresh_ca):
    hub = live_hub
    port = hub.admission.listener.getsockname()[1]
    sock, remote = tcp.connect("127.0.0.1", port)
    ctx = pki.spoke_context(TLSConfig(fresh_ca / "ca.crt", fresh_ca / "site-a.crt",
                                      fresh_ca / "site-a.key"), None)
    client = transport.Session(hub.loop, sock, remote, context=ctx, server_side=False,
                               node="site-a", mtu=1500)
    try:
        run_until(hub.loop, lambda: "site-a" in hub.sessions, what="site-a up")
        got = samples(hub.metrics_text().decode())
        assert value(got, "l2vpn_sessions") == 1
        assert value(got, "l2vpn_handshakes_total") == 1
        assert not failures(hub)
        assert value(got, "l2vpn_port_receive_frames_total", port="site-a") == 0
    finally:
        client.close("test over")


# -- metrics.listen ----------------------------------------------------------------------


HUB = {"node": "hub", "tls": {"ca": "ca.crt", "cert": "hub.crt", "key": "hub.key"}}
SPOKE = {"node": "site-a", "hub": {"address": "198.18.0.1"},
         "tls": {"ca": "ca.crt", "cert": "site-a.crt", "key": "site-a.key"},
         "tap": {"name": "l2vpn0"}}


def load(tmp_path, base, role, metrics_section):
    doc = dict(base)
    if metrics_section is not None:
        doc["metrics"] = metrics_section
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, config.load(path, role)


@pytest.mark.parametrize("text, host, port", [
    ("127.0.0.1:9477", "127.0.0.1", 9477),
    ("0.0.0.0:80", "0.0.0.0", 80),
    ("[::1]:9477", "::1", 9477),
    ("[::]:65535", "::", 65535),
])
@pytest.mark.parametrize("base, role", [(HUB, "hub"), (SPOKE, "spoke")])
def test_good_metrics_listen_values(tmp_path, base, role, text, host, port):
    _, cfg = load(tmp_path, base, role, {"listen": text})
    assert cfg.metrics.listen == config.HostPort(host, port)
    assert str(cfg.metrics.listen) == text


@pytest.mark.parametrize("base, role", [(HUB, "hub"), (SPOKE, "spoke")])
def test_metrics_are_off_unless_listen_is_set(tmp_path, base, role):
    assert load(tmp_path, base, role, None)[1].metrics.listen is None
    assert load(tmp_path, base, role, {})[1].metrics.listen is None


@pytest.mark.parametrize("bad", ["9477", "localhost:9477", "::1:9477", "[127.0.0.1]:9477",
                                 "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:", ":9477",
                                 "[::1]", 9477, True, "1.2.3.4:9477 "])
def test_bad_metrics_listen_values_are_one_line_naming_file_and_key(tmp_path, bad):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, HUB, "hub", {"listen": bad})
    path = tmp_path / "node.yaml"
    assert info.value.problems == [
        f"{path}: metrics.listen: expected an address and port like 127.0.0.1:9477 or "
        f"[::1]:9477, got {bad!r}" if not isinstance(bad, bool) else
        f"{path}: metrics.listen: expected an address and port like 127.0.0.1:9477 or "
        f"[::1]:9477, got true"]


def test_unknown_metrics_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, SPOKE, "spoke", {"listen": "127.0.0.1:9477", "port": 1})
    assert info.value.problems == [
        f"{tmp_path / 'node.yaml'}: metrics.port: unknown key (expected one of: listen)"]


def test_the_example_configs_load_with_metrics_off():
    configs = Path(__file__).resolve().parents[2] / "configs"
    assert config.load_hub(configs / "hub.yaml").metrics.listen is None
    assert config.load_spoke(configs / "spoke-site-a.yaml").metrics.listen is None
