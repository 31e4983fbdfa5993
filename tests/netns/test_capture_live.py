"""`l2vpn capture` on real daemons: pings between two sites captured at the hub, read
back with scapy's pcapng reader and tshark; -n, `-w -` into a pipe, Ctrl-C and the node
exiting each leave a valid file."""

import contextlib
import shutil
import signal
import subprocess

import pytest
from scapy.layers.inet import ICMP
from scapy.utils import PcapNgReader

from l2vpn import pcapng
from l2vpn.capture import LIST_REQUEST
from l2vpn.management import query

pytestmark = pytest.mark.netns

TSHARK = shutil.which("tshark")


@contextlib.contextmanager
def pinging(lab, src, dst, count=400):
    """Pings from src to dst in the background (a bounded number, stopped at the end)."""
    p = subprocess.Popen(["ip", "netns", "exec", lab.ns(src), "ping", "-q", "-c", str(count),
                          "-i", "0.05", lab.ip(dst)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        yield p
    finally:
        p.kill()
        p.wait(10)


def capture(lab, node, *args, **popen):
    argv = [lab.python, "-m", "l2vpn", "capture", "-s", str(lab.nodes[node].socket), *args]
    return subprocess.Popen(argv, cwd=lab.src, env=lab._env(), stderr=subprocess.PIPE,
                            text=False, **popen)


def finish(p, timeout_s=20):
    try:
        _, err = p.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate(timeout=10)
        raise
    return p.returncode, err.decode()


def packets(path):
    with PcapNgReader(str(path)) as reader:
        return list(reader)


def kinds(path):
    blocks, used = pcapng.split(path.read_bytes())
    assert used == path.stat().st_size, "a partial block was written"
    return [k for k, _ in blocks]


def has_packets(path):
    return path.exists() and pcapng.EPB in kinds(path)


def test_capture_of_one_port_shows_both_directions_to_scapy_and_tshark(make_lab, tmp_path):
    lab = make_lab(spokes=["site-a", "site-b"])
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))
    out = tmp_path / "site-a.pcapng"
    with pinging(lab, "site-a", "site-b"):
        rc, err = finish(capture(lab, "hub", "--port", "site-a", "-w", str(out), "-n", "8"))
    assert rc == 0, err
    assert "l2vpn: capture: 8 frames captured, none lost" in err and "Traceback" not in err
    got = packets(out)
    assert len(got) == 8
    assert {p.sniffed_on for p in got} == {"site-a"}
    echo = [p for p in got if ICMP in p]
    requests = {p.direction for p in echo if p[ICMP].type == 8}
    replies = {p.direction for p in echo if p[ICMP].type == 0}
    assert requests == {pcapng.INBOUND} and replies == {pcapng.OUTBOUND}, (requests, replies)
    assert kinds(out)[-1] == pcapng.ISB
    if TSHARK:
        t = subprocess.run([TSHARK, "-r", str(out), "-T", "fields", "-e",
                            "frame.interface_name", "-e", "frame.packet_flags_direction",
                            "-e", "icmp.type"], capture_output=True, text=True, timeout=60)
        assert t.returncode == 0, t.stderr
        rows = [line.split("\t") for line in t.stdout.splitlines()]
        assert len(rows) == 8 and {r[0] for r in rows} == {"site-a"}
        assert {(int(r[1], 0), r[2]) for r in rows if r[2] in ("8", "0")} <= {
            (pcapng.INBOUND, "8"), (pcapng.OUTBOUND, "0")}


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (tests/run installs it)")
def test_capture_to_stdout_piped_into_tshark(make_lab):
    lab = make_lab(spokes=["site-a", "site-b"])
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))
    with pinging(lab, "site-b", "site-a"):
        cap = capture(lab, "hub", "-w", "-", "-n", "6", stdout=subprocess.PIPE)
        t = subprocess.run([TSHARK, "-r", "-", "-T", "fields", "-e", "frame.interface_name",
                            "-e", "icmp.type"], stdin=cap.stdout, capture_output=True,
                           text=True, timeout=60)
        cap.stdout.close()
        rc, err = finish(cap)
    assert rc == 0, err
    assert t.returncode == 0, t.stderr
    rows = [line.split("\t") for line in t.stdout.splitlines()]
    assert len(rows) == 6, t.stdout
    assert {r[0] for r in rows} <= {"site-a", "site-b"} and any(r[1] for r in rows)


def test_ctrl_c_ends_the_capture_with_statistics(make_lab, tmp_path):
    lab = make_lab(spokes=["site-a", "site-b"])
    lab.wait_ping(lab.ns("site-a"), lab.ip("site-b"))
    out = tmp_path / "all.pcapng"
    with pinging(lab, "site-a", "site-b"):
        cap = capture(lab, "hub", "-w", str(out))
        lab.wait_until(lambda: has_packets(out), 15, what="captured frames in the file")
        cap.send_signal(signal.SIGINT)
        rc, err = finish(cap, timeout_s=10)
    assert rc == 0, err
    assert "frames captured" in err and "Traceback" not in err
    found = kinds(out)
    assert found[0] == pcapng.SHB and found[-1] == pcapng.ISB
    got = packets(out)
    assert got and {p.sniffed_on for p in got} <= {"hub", "site-a", "site-b"}
    assert {"site-a", "site-b"} <= {p.sniffed_on for p in got}


def test_the_node_exiting_ends_the_capture_with_a_valid_file(make_lab, tmp_path):
    lab = make_lab(spokes=["site-a", "site-b"])
    lab.wait_ping(lab.ns("site-b"), lab.ip("site-a"))
    out = tmp_path / "spoke.pcapng"
    with pinging(lab, "site-b", "site-a"):
        cap = capture(lab, "site-b", "--port", "hub", "-w", str(out))
        lab.wait_until(lambda: has_packets(out), 15, what="captured frames in the file")
        lab.stop("site-b")
        rc, err = finish(cap, timeout_s=15)
    assert rc == 0, err
    assert "frames captured" in err and "Traceback" not in err
    got = packets(out)
    assert got and {p.sniffed_on for p in got} == {"hub"}


def test_unknown_port_is_one_line_and_exit_2(make_lab, tmp_path):
    lab = make_lab(spokes=["site-a"])
    listed = query(lab.nodes["hub"].socket, LIST_REQUEST)
    assert "site-a" in listed["ports"]
    out = lab.l2vpn("capture", "-s", str(lab.nodes["hub"].socket), "--port", "no such",
                    "-w", str(tmp_path / "x.pcapng"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"l2vpn: capture: no port no such on hub {listed['node']} "
        f"(ports: {', '.join(listed['ports'])})"], out.stderr
    assert not (tmp_path / "x.pcapng").exists()
