"""Mistakes a user makes give one clear line and the documented exit code, never a
traceback: `l2vpn hub|spoke -c` (exit 2 for config, 1 for runtime) and `l2vpn check -c`.

One lab (PKI and namespaces, no daemons running) serves the module; each case writes its
own config file next to the good ones and runs the daemon in the hub's namespace.
"""

import fcntl
import os
import struct

import pytest

import labnet

pytestmark = pytest.mark.netns

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def run_node(lab, role, path, timeout_s=20):
    """Run `l2vpn ROLE -c PATH` in its node's namespace; it must exit by itself."""
    ns = lab.ns("hub" if role == "hub" else "site-a")
    return lab.l2vpn(role, "-c", str(path), ns=ns, timeout_s=timeout_s)


def error_lines(out):
    return [ln for ln in out.stderr.splitlines() if ln.strip()]


def bad_config(lab, node, name, changes):
    return lab.update_config(node, changes, lab.workdir / f"{name}.yaml")


CONFIG_CASES = {
    # name: (node, changes, words the one line must contain)
    "unknown-key": ("hub", {"bogus_key": 1}, ["bogus_key"]),
    "unknown-nested-key": ("hub", {"listen": {"backlog": 5}}, ["listen.backlog"]),
    "missing-cert-file": ("hub", {"tls": {"cert": "pki/nope.crt"}}, ["tls.cert"]),
    "key-not-for-cert": ("hub", {"tls": {"key": "pki/site-a.key"}}, ["tls"]),
    "spoke-port-not-a-number": ("site-a", {"hub": {"port": "seven"}}, ["hub.port"]),
    "spoke-missing-ca": ("site-a", {"tls": {"ca": None}}, ["tls.ca"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_error_is_one_clean_line_exit_2(cfg_lab, case):
    node, changes, words = CONFIG_CASES[case]
    role = cfg_lab.nodes[node].role
    path = bad_config(cfg_lab, node, case, changes)
    out = run_node(cfg_lab, role, path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    lines = error_lines(out)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    # `check` finds the same problem
    chk = cfg_lab.l2vpn("check", "-c", str(path))
    assert chk.returncode == 2, chk.stdout + chk.stderr
    assert any(all(w in ln for w in words) for ln in (chk.stdout + chk.stderr).splitlines())


def test_port_in_use_is_a_runtime_error_exit_1(cfg_lab):
    squatter = cfg_lab.socket_in(cfg_lab.ns("hub"))
    try:
        squatter.bind(("0.0.0.0", cfg_lab.port))
        squatter.listen(1)
        out = run_node(cfg_lab, "hub", cfg_lab.nodes["hub"].config)
    finally:
        squatter.close()
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    lines = error_lines(out)
    assert lines and (str(cfg_lab.port) in lines[-1] or "in use" in lines[-1].lower()), lines
    # it cleaned up after itself: no TAP left behind
    assert not labnet.link_exists(cfg_lab.ns("hub"), "l2hub0")


def test_tap_name_in_use_is_a_runtime_error_exit_1(cfg_lab):
    # hold a TAP with the hub's TAP name open in the hub's namespace
    with labnet.in_netns(cfg_lab.ns("hub")):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"l2hub0", IFF_TAP | IFF_NO_PI))
        out = run_node(cfg_lab, "hub", cfg_lab.nodes["hub"].config)
        assert labnet.link_exists(cfg_lab.ns("hub"), "l2hub0"), "our TAP was taken away"
    finally:
        os.close(fd)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    lines = error_lines(out)
    assert lines and "l2hub0" in lines[-1], lines


# ---------------------------------------------------------------------------- 15


@pytest.mark.parametrize("node", ["hub", "site-a"])
def test_check_says_ok_on_a_good_config(cfg_lab, node):
    out = cfg_lab.l2vpn("check", "-c", str(cfg_lab.nodes[node].config))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout


def test_check_lists_every_problem(cfg_lab):
    path = bad_config(cfg_lab, "hub", "two-problems",
                      {"listen": {"port": "http"}, "colour": "blue"})
    out = cfg_lab.l2vpn("check", "-c", str(path))
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "OK" not in text.split()
    problems = [ln for ln in text.splitlines() if ln.startswith(f"{path}: ")]
    assert any("listen.port" in ln for ln in problems), text
    assert any("colour" in ln for ln in problems), text
    assert "Traceback" not in text
