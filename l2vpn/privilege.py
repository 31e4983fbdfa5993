"""Least privilege: once the node holds its TAP and sockets, become `user:`/`group:`.

Why: l2vpn parses TLS records and Ethernet frames from the network. If a bug there ever
lets a peer run code in the daemon, that code should hold nothing: no root uid, no
capabilities, no way to regain either. It then cannot reconfigure the host (links,
routes, firewall), read other users' files or load modules.

What is kept: by default no capability at all. A caller that must still undo netlink
changes at exit (an address it put on a bridge) passes keep=(CAP_NET_ADMIN,) and holds
that one capability, effective and permitted, never inheritable or ambient. Nothing else
is needed later: descriptors opened before the drop (the TAP, the listening and
connected sockets, the management socket) keep working: reading, writing and accepting
on an open descriptor need no privilege, only opening and configuring it do.

Theory of operation (the order is the point):
1. PR_SET_KEEPCAPS=1, only when something is kept; otherwise setresuid below clears the
   permitted set, which is what we want.
2. setgroups, setresgid, then setresuid: groups while we are still root enough to change
   them, uid last because it takes away the right to do the rest. All three ids (real,
   effective, saved) change, so no saved root id is left to switch back to.
3. capset: permitted = effective = keep, inheritable = 0 (lowering is always allowed).
4. PR_SET_KEEPCAPS=0, clear the ambient set, PR_SET_NO_NEW_PRIVS=1, so that no execve
   (setuid binary, file capabilities) can give anything back. This is also why the
   bounding set is left alone.
5. Read everything back and raise if any of it did not take.

Supplementary groups become empty, not [gid]: the primary gid is already the effective
and real gid, so listing it again grants nothing, and an empty list is the minimum that
is obvious to check (getgroups() == []).

Not root: a process already running as the identity's uid and gid skips step 2 (it could
not change its groups anyway) and still sheds what it holds beyond `keep`; any other
identity is an error, since only root can switch.

Capabilities, PR_SET_KEEPCAPS and no_new_privs belong to a thread, not the process, so
drop() refuses to run while the process has more than one thread.
"""

import ctypes
import grp
import os
import pwd
from typing import NamedTuple

from l2vpn.errors import ConfigError, L2VPNError

CAP_NET_ADMIN = 12
CAP_LAST_SUPPORTED = 63

# linux/prctl.h
PR_GET_KEEPCAPS = 7
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# linux/capability.h
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_LINUX_CAPABILITY_U32S_3 = 2

_HOW_TO_FIX = "run l2vpn as root, or remove user: from the config"


class Identity(NamedTuple):
    """Who the process becomes: names for messages, ids for the kernel."""

    user: str
    uid: int
    group: str
    gid: int
    groups: tuple[int, ...]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int32)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32),
                ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_CapDataV3 = _CapData * _LINUX_CAPABILITY_U32S_3
_SETS = ("effective", "permitted", "inheritable")

_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        for name in ("capget", "capset"):
            getattr(_libc, name).argtypes = [ctypes.POINTER(_CapHeader),
                                             ctypes.POINTER(_CapData)]
        _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                                ctypes.c_ulong, ctypes.c_ulong]
    return _libc


def _os_error() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


def _prctl(option: int, arg2: int = 0) -> int:
    ret = _lib().prctl(option, arg2, 0, 0, 0)
    if ret < 0:
        raise _os_error()
    return ret


def _capget() -> dict[str, int]:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataV3()
    if _lib().capget(ctypes.byref(header), data) != 0:
        raise _os_error()
    return {s: getattr(data[0], s) | getattr(data[1], s) << 32 for s in _SETS}


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataV3()
    for word in range(_LINUX_CAPABILITY_U32S_3):
        shift = 32 * word
        data[word].effective = (effective >> shift) & 0xFFFFFFFF
        data[word].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[word].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    if _lib().capset(ctypes.byref(header), data) != 0:
        raise _os_error()


def capabilities() -> dict[str, int]:
    """This thread's capability sets as bit masks: {"effective", "permitted", "inheritable"}."""
    return _capget()


def _status_field(name: str) -> str:
    with open("/proc/thread-self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == name:
                return value.strip()
    raise OSError(0, f"/proc/thread-self/status has no {name} line")


def _mask(keep) -> int:
    mask = 0
    for cap in keep:
        if isinstance(cap, bool) or not isinstance(cap, int) \
                or not 0 <= cap <= CAP_LAST_SUPPORTED:
            raise ValueError(f"not a capability number: {cap!r}")
        mask |= 1 << cap
    return mask


def resolve(user: str, group: str | None = None) -> Identity:
    """Look up `user:` and `group:` (names or numeric ids); no group means the user's primary."""
    user = str(user).strip()
    if not user:
        raise ConfigError("user: is empty (name a user, e.g. nobody, or remove user:)")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        pw = None
        if user.isdigit():
            try:
                pw = pwd.getpwuid(int(user))
            except KeyError:
                pass
    if pw is not None:
        name, uid, primary = pw.pw_name, pw.pw_uid, pw.pw_gid
    elif user.isdigit() and group is not None:
        name, uid, primary = user, int(user), None
    elif user.isdigit():
        raise ConfigError(f"user: uid {user} has no passwd entry, so no primary group "
                          f"(set group: too, or create the user)")
    else:
        raise ConfigError(f"user: no such user {user!r} "
                          f"(create it: useradd --system --no-create-home {user})")

    if group is None:
        try:
            gr_name = grp.getgrgid(primary).gr_name
        except KeyError:
            gr_name = str(primary)
        return Identity(name, uid, gr_name, primary, ())

    group = str(group).strip()
    if not group:
        raise ConfigError("group: is empty (name a group, e.g. nogroup, or remove group: "
                          "to use the user's primary group)")
    try:
        gr = grp.getgrnam(group)
    except KeyError:
        gr = None
        if group.isdigit():
            try:
                gr = grp.getgrgid(int(group))
            except KeyError:
                return Identity(name, uid, group, int(group), ())
    if gr is None:
        raise ConfigError(f"group: no such group {group!r} (create it: groupadd --system "
                          f"{group}, or remove group: to use the user's primary group)")
    return Identity(name, uid, gr.gr_name, gr.gr_gid, ())


def drop(identity: Identity, keep: tuple[int, ...] = ()) -> None:
    """Become `identity` for good, holding only the capabilities in `keep` (see module doc)."""
    keep_mask = _mask(keep)
    who = identity.user
    if len(os.listdir("/proc/self/task")) > 1:
        raise L2VPNError(f"cannot drop privileges to {who}: the process has more than one "
                         f"thread (drop before starting threads)")
    root = os.geteuid() == 0
    if root:
        steps = [("setgroups", os.setgroups, list(identity.groups)),
                 ("setresgid", os.setresgid, *(identity.gid,) * 3),
                 ("setresuid", os.setresuid, *(identity.uid,) * 3)]
        if keep_mask:
            steps.insert(0, ("prctl(PR_SET_KEEPCAPS)", _prctl, PR_SET_KEEPCAPS, 1))
    elif os.getresuid() == (identity.uid,) * 3 and os.getresgid() == (identity.gid,) * 3:
        # Already this user: nothing to change but the capabilities, and one cannot
        # keep what one does not hold (a non-root node made no netlink changes to undo).
        steps = []
        keep_mask &= _capget()["permitted"]
    else:
        raise L2VPNError(f"cannot drop privileges to {who}: running as uid {os.geteuid()}, "
                         f"not root ({_HOW_TO_FIX})")
    steps += [("capset", _capset, keep_mask, keep_mask, 0),
              ("prctl(PR_SET_KEEPCAPS)", _prctl, PR_SET_KEEPCAPS, 0),
              ("prctl(PR_CAP_AMBIENT)", _prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL),
              ("prctl(PR_SET_NO_NEW_PRIVS)", _prctl, PR_SET_NO_NEW_PRIVS, 1)]
    for name, call, *args in steps:
        try:
            call(*args)
        except OSError as e:
            raise L2VPNError(f"cannot drop privileges to {who}: {name}: {e.strerror} "
                             f"({_HOW_TO_FIX})") from None
    problems = _check(identity, keep_mask, groups_changed=root)
    if problems:
        raise L2VPNError(f"cannot drop privileges to {who}: {'; '.join(problems)} "
                         f"({_HOW_TO_FIX})")


def _check(identity: Identity, keep_mask: int, groups_changed: bool) -> list[str]:
    """What did not take, read back from the kernel; empty when all did."""
    problems = []
    if os.getresuid() != (identity.uid,) * 3:
        problems.append(f"uids are {os.getresuid()}")
    if os.getresgid() != (identity.gid,) * 3:
        problems.append(f"gids are {os.getresgid()}")
    if groups_changed and set(os.getgroups()) != set(identity.groups):
        problems.append(f"groups are {os.getgroups()}")
    try:
        caps = _capget()
        ambient = int(_status_field("CapAmb"), 16)
        keepcaps = _prctl(PR_GET_KEEPCAPS)
        no_new_privs = _prctl(PR_GET_NO_NEW_PRIVS)
    except OSError as e:
        return problems + [f"cannot read back: {e.strerror}"]
    for name in ("effective", "permitted"):
        if caps[name] != keep_mask:
            problems.append(f"{name} capabilities are {caps[name]:#x}, not {keep_mask:#x}")
    if caps["inheritable"]:
        problems.append(f"inheritable capabilities are {caps['inheritable']:#x}")
    if ambient:
        problems.append(f"ambient capabilities are {ambient:#x}")
    if keepcaps:
        problems.append("keep-caps is still set")
    if no_new_privs != 1:
        problems.append("no_new_privs is not set")
    return problems


def resolve_config(cfg) -> Identity:
    """The `user:`/`group:` of a node config; an unknown one is a config error naming the file."""
    try:
        return resolve(cfg.user, cfg.group)
    except ConfigError as e:
        raise ConfigError([f"{cfg.path}: {line}" for line in e.problems]) from None
