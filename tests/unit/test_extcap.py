"""The Wireshark extcap entry point: arguments, interface listing from fake management
sockets, and a capture into a FIFO, without root."""

import io
import os
import threading

import pytest
from fakes import call_in_thread

from l2vpn import capture, extcap, pcapng
from l2vpn.errors import L2VPNError
from l2vpn.management import ManagementServer


def run(argv, environ=None):
    out = io.StringIO()
    rc = extcap.main(argv, environ=environ or {}, stdout=out)
    return rc, out.getvalue().splitlines()


def test_sockets_come_from_the_environment_or_run_l2vpn(tmp_path):
    (tmp_path / "a.sock").touch()
    (tmp_path / "b.sock").touch()
    env = {"L2VPN_SOCKETS": f"{tmp_path}/*.sock:/elsewhere/x.sock"}
    assert extcap.sockets(env) == [f"{tmp_path}/a.sock", f"{tmp_path}/b.sock",
                                   "/elsewhere/x.sock"]
    assert extcap.sockets({"L2VPN_SOCKETS": "/nowhere/*.sock"}) == []


def test_interfaces_are_one_per_port_and_one_for_all_of_each_node():
    def ask(path, command, timeout_s):
        assert command == capture.LIST_REQUEST
        if path == "dead":
            raise L2VPNError("no node")
        return {"node": path, "role": "hub", "ports": ["hub", "site-a"]}
    found = extcap.nodes(["hub1", "dead"], ask=ask)
    assert found == [("hub1", "hub1", ["hub", "site-a"])]
    assert extcap.interfaces(found) == [
        "interface {value=l2vpn:hub1}{display=l2vpn hub1: all ports}",
        "interface {value=l2vpn:hub1:hub}{display=l2vpn hub1: port hub}",
        "interface {value=l2vpn:hub1:site-a}{display=l2vpn hub1: port site-a}"]


def test_parse_interface():
    assert extcap.parse_interface("l2vpn:hub1") == ("hub1", None)
    assert extcap.parse_interface("l2vpn:hub1:site-a") == ("hub1", "site-a")
    for bad in ("eth0", "l2vpn:", "l2vpn:a:b:c", "l2vpn::x"):
        with pytest.raises(L2VPNError):
            extcap.parse_interface(bad)


def test_dlts_config_and_unknown_options():
    rc, lines = run(["--extcap-interface", "l2vpn:hub1", "--extcap-dlts",
                     "--extcap-version=4.2", "--some-future-option"])
    assert rc == 0 and lines == ["dlt {number=1}{name=EN10MB}{display=Ethernet}"]
    rc, lines = run(["--extcap-interface", "l2vpn:hub1:site-a", "--extcap-config"])
    assert rc == 0 and lines[0].startswith("arg {number=0}{call=--gso}")
    assert "{type=boolflag}" in lines[0]


def test_errors_are_one_line_and_exit_1(capsys):
    assert run(["--extcap-interface", "eth0", "--extcap-dlts"])[0] == 1
    assert run(["--extcap-interface", "l2vpn:x", "--capture"])[0] == 1
    assert run(["--extcap-interface", "l2vpn:x", "--capture", "--fifo", "/tmp/f",
                "--extcap-capture-filter", "tcp"])[0] == 1
    rc = run(["--extcap-interface", "l2vpn:x", "--capture", "--fifo", "/tmp/f"],
             {"L2VPN_SOCKETS": "/nowhere.sock"})[0]
    assert rc == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("l2vpn-extcap: ") for line in err)
    assert "no running l2vpn node x" in err[-1]


class OneFrame(capture.Stream):
    """A node's capture reduced to one frame and the end."""

    timeout_s = None

    def __init__(self):
        self.data = (pcapng.section_header() + pcapng.interface("site-a") +
                     pcapng.packet(0, 1.0, b"\x02" * 60, pcapng.INBOUND) +
                     pcapng.statistics(0, 2.0, 1.0, 1, 0))

    def pull(self, limit):
        data, self.data = self.data, None
        return data


def test_interfaces_and_a_capture_into_a_fifo_through_a_real_socket(loop, tmp_path):
    requests = []

    def handler(command):
        requests.append(command)
        if command == capture.LIST_REQUEST:
            return {"node": "hub1", "role": "hub", "ports": ["site-a"]}
        return OneFrame()

    path = tmp_path / "hub1.sock"
    srv = ManagementServer(loop, path, handler)
    env = {"L2VPN_SOCKETS": str(path)}
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = {}

    def wireshark_reads():
        with open(fifo, "rb") as f:
            got["data"] = f.read()
    reader = threading.Thread(target=wireshark_reads, daemon=True)
    reader.start()
    try:
        rc, lines = call_in_thread(loop, lambda: run(["--extcap-interfaces"], env))
        assert rc == 0 and lines[1:] == [
            "interface {value=l2vpn:hub1}{display=l2vpn hub1: all ports}",
            "interface {value=l2vpn:hub1:site-a}{display=l2vpn hub1: port site-a}"]
        rc, _ = call_in_thread(loop, lambda: run(
            ["--extcap-interface", "l2vpn:hub1:site-a", "--capture", "--fifo", str(fifo),
             "--gso"], env))
        assert rc == 0
    finally:
        srv.close()
    reader.join(5)
    assert requests[-1] == capture.request_line(["site-a"], True)
    kinds = [k for k, _ in pcapng.split(got["data"])[0]]
    assert kinds == [pcapng.SHB, pcapng.IDB, pcapng.EPB, pcapng.ISB]
