"""privilege: resolve names to ids; drop to nobody/nogroup in a forked child, read it back.

A drop cannot be undone, so every test that calls drop() runs it in a child made with
os.fork(); the child reports what it saw as JSON over a pipe and leaves with os._exit.
"""

import ctypes
import grp
import json
import os
import pwd
import socket
import threading
import uuid

import pytest

from l2vpn import privilege
from l2vpn.errors import ConfigError, L2VPNError
from l2vpn.privilege import CAP_NET_ADMIN, Identity, capabilities, drop, resolve

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="dropping to another user needs root; run as root")

CAP_SETUID = 7
PR_GET_KEEPCAPS = 7
SO_MARK = 36                    # needs CAP_NET_ADMIN (or CAP_NET_RAW)


def in_child(body) -> dict:
    """Run body() in a forked child; {"ok": its result} or {"error": name, "message": text}."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # pragma: no cover (runs in the child)
        try:
            os.close(r)
            try:
                out = {"ok": body()}
            except BaseException as e:
                out = {"error": type(e).__name__, "message": str(e)}
            with os.fdopen(w, "w") as f:
                f.write(json.dumps(out, default=repr))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)


def ok(result: dict):
    assert "error" not in result, result
    return result["ok"]


def status_fields() -> dict:
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def seen_by_kernel() -> dict:
    libc = ctypes.CDLL(None, use_errno=True)
    st = status_fields()
    return {"resuid": list(os.getresuid()), "resgid": list(os.getresgid()),
            "groups": os.getgroups(), "caps": capabilities(),
            "amb": int(st["CapAmb"], 16), "no_new_privs": int(st["NoNewPrivs"]),
            "keepcaps": libc.prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0)}


def can_set_mark() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, 1)
        except PermissionError:
            return False
    return True


@pytest.fixture
def nobody():
    """nobody with the group found in the group database (nogroup on Debian)."""
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody on this machine")
    return Identity("nobody", pw.pw_uid, grp.getgrgid(pw.pw_gid).gr_name, pw.pw_gid, ())


def unknown_name(db) -> str:
    name = "l2vpn-test-" + uuid.uuid4().hex[:8]
    with pytest.raises(KeyError):
        db(name)
    return name


# -- resolve --------------------------------------------------------------------------


def test_resolve_nobody_takes_its_primary_group(nobody):
    pw = pwd.getpwnam("nobody")
    gr = grp.getgrgid(pw.pw_gid)
    got = resolve("nobody")
    assert got == Identity("nobody", pw.pw_uid, gr.gr_name, gr.gr_gid, ())
    assert got.groups == ()


def test_resolve_named_group_and_numeric_ids(nobody):
    root_group = grp.getgrgid(0)
    assert resolve("nobody", root_group.gr_name) == nobody._replace(group=root_group.gr_name,
                                                                    gid=0)
    assert resolve(str(nobody.uid), str(nobody.gid)) == nobody


def test_unknown_user_is_one_line_config_error():
    name = unknown_name(pwd.getpwnam)
    with pytest.raises(ConfigError) as e:
        resolve(name)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("user: no such user") and repr(name) in msg
    assert f"useradd --system --no-create-home {name}" in msg


def test_unknown_group_is_one_line_config_error(nobody):
    name = unknown_name(grp.getgrnam)
    with pytest.raises(ConfigError) as e:
        resolve("nobody", name)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("group: no such group") and repr(name) in msg
    assert "groupadd" in msg


def test_numeric_uid_without_an_entry_needs_a_group():
    taken = {p.pw_uid for p in pwd.getpwall()}
    uid = next(u for u in range(3_000_000, 3_001_000) if u not in taken)
    with pytest.raises(ConfigError) as e:
        resolve(str(uid))
    assert "\n" not in str(e.value) and "group:" in str(e.value)
    assert resolve(str(uid), "0") == Identity(str(uid), uid, grp.getgrgid(0).gr_name, 0, ())


# -- capabilities ---------------------------------------------------------------------


def test_capabilities_match_proc_status():
    st = status_fields()
    assert capabilities() == {"effective": int(st["CapEff"], 16),
                              "permitted": int(st["CapPrm"], 16),
                              "inheritable": int(st["CapInh"], 16)}


# -- drop -----------------------------------------------------------------------------


@needs_root
def test_drop_to_nobody_holds_nothing_and_old_fds_still_work(nobody):
    def body():
        r, w = os.pipe()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        os.setgroups([0])                       # root's group, which the drop must shed
        assert can_set_mark()                   # as root, so its False below means something
        drop(nobody)
        os.write(w, b"ping")
        listener.settimeout(5)
        with socket.socket() as c:              # not create_connection: its getaddrinfo
            c.settimeout(5)                     # imports the idna codec, which nobody may
            c.connect(listener.getsockname())   # not be able to read (python under /root)
            peer, _ = listener.accept()
            c.sendall(b"tcp")
            got_tcp = peer.recv(3)
        return {**seen_by_kernel(), "pipe": os.read(r, 4).decode(),
                "tcp": got_tcp.decode(), "mark": can_set_mark()}

    got = ok(in_child(body))
    assert got["resuid"] == [nobody.uid] * 3
    assert got["resgid"] == [nobody.gid] * 3
    assert got["groups"] == [] and 0 not in got["groups"]
    assert got["caps"] == {"effective": 0, "permitted": 0, "inheritable": 0}
    assert got["amb"] == 0 and got["keepcaps"] == 0
    assert got["no_new_privs"] == 1
    assert got["pipe"] == "ping" and got["tcp"] == "tcp"
    assert got["mark"] is False


@needs_root
def test_drop_keeping_net_admin_keeps_only_that(nobody):
    def body():
        drop(nobody, keep=(CAP_NET_ADMIN,))
        return {**seen_by_kernel(), "mark": can_set_mark()}

    got = ok(in_child(body))
    assert got["resuid"] == [nobody.uid] * 3 and got["resgid"] == [nobody.gid] * 3
    assert got["caps"] == {"effective": 1 << CAP_NET_ADMIN, "permitted": 1 << CAP_NET_ADMIN,
                           "inheritable": 0}
    assert got["amb"] == 0 and got["keepcaps"] == 0 and got["no_new_privs"] == 1
    assert got["mark"] is True                  # the kept capability is usable, not just a bit


def privileged_port_start() -> int:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        return int(f.read())


@needs_root
@pytest.mark.skipif(privileged_port_start() == 0,
                    reason="net.ipv4.ip_unprivileged_port_start is 0: every port is unprivileged")
@pytest.mark.parametrize("keep", [(), (CAP_NET_ADMIN,)])
def test_no_privileged_bind_after_drop(nobody, keep):
    def bind(port):
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))

    def body():
        for port in range(privileged_port_start() - 1, 0, -1):
            try:
                bind(port)                      # as root: a free privileged port
                break
            except OSError:
                continue
        else:
            raise AssertionError("no free privileged port on 127.0.0.1")
        drop(nobody, keep=keep)
        try:
            bind(port)
        except PermissionError:
            return {"port": port, "bound": False}
        return {"port": port, "bound": True}

    got = ok(in_child(body))
    assert got["bound"] is False, got


def become_nobody_by_hand(nobody):
    """As root: switch ids with plain setres*id (which clears capabilities), no drop()."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(nobody.gid, nobody.gid, nobody.gid)
        os.setresuid(nobody.uid, nobody.uid, nobody.uid)


def test_not_root_and_another_identity_is_one_line_error(nobody):
    def body():
        become_nobody_by_hand(nobody)
        before = seen_by_kernel()
        try:
            drop(Identity("root", 0, "root", 0, ()))
        except L2VPNError as e:
            return {"message": str(e), "unchanged": seen_by_kernel() == before}
        return {"message": None}

    got = ok(in_child(body))
    assert got["message"] and "\n" not in got["message"], got
    assert got["message"].startswith("cannot drop privileges to root: ")
    assert "not root" in got["message"] and "remove user:" in got["message"]
    assert got["unchanged"] is True


def test_not_root_and_same_identity_is_allowed(nobody):
    def body():
        become_nobody_by_hand(nobody)
        me = Identity("me", os.getuid(), "mine", os.getgid(), ())
        drop(me)
        return seen_by_kernel()

    got = ok(in_child(body))
    assert got["resuid"] == [os.getuid() if os.geteuid() else nobody.uid] * 3
    assert got["caps"]["effective"] == got["caps"]["permitted"] == 0
    assert got["no_new_privs"] == 1


@needs_root
def test_a_step_that_fails_is_named_in_one_line(nobody):
    def body():
        caps = capabilities()
        without = caps["effective"] & ~(1 << CAP_SETUID)
        privilege._capset(without, without, 0)
        try:
            drop(nobody)
        except L2VPNError as e:
            return str(e)
        return None

    msg = ok(in_child(body))
    assert msg == ("cannot drop privileges to nobody: setresuid: Operation not permitted "
                   "(run l2vpn as root, or remove user: from the config)")


def test_drop_refuses_a_second_thread(nobody):
    def body():
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        try:
            before = seen_by_kernel()
            drop(nobody)
        except L2VPNError as e:
            return {"message": str(e), "unchanged": seen_by_kernel() == before}
        finally:
            stop.set()
            t.join()
        return {"message": None}

    got = ok(in_child(body))
    assert got["message"] and "thread" in got["message"] and "\n" not in got["message"]
    assert got["unchanged"] is True


def test_drop_rejects_a_bad_capability_number(nobody):
    def body():
        before = seen_by_kernel()
        try:
            drop(nobody, keep=(64,))
        except ValueError:
            return seen_by_kernel() == before
        return None

    assert ok(in_child(body)) is True


def test_read_back_names_what_did_not_take(nobody):
    if os.getuid() == nobody.uid:
        pytest.skip("already running as nobody")
    problems = privilege._check(nobody, 1 << CAP_NET_ADMIN, groups_changed=True)
    assert any(p.startswith("uids are") for p in problems)
    assert any(p.startswith("gids are") for p in problems)
    assert any(p.startswith("effective capabilities are") for p in problems)
