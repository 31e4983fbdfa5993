"""YAML config files -> frozen dataclasses; every mistake becomes one line naming file and key.

Theory of operation: `SECTIONS` is the whole schema. Each row names a top-level key, the
keys it may hold, a check per key, which roles accept it and which require it. `_load`
walks the document against that table, gathers every problem before giving up, and only
then builds the dataclasses, so a user fixes all their mistakes in one pass. A new
setting is a new row (and a field on the dataclass the row builds, and a line in RELOAD).

Most sections hold fixed keys; `ports` is a section of named entries (one per switch
port), each holding fixed keys. A reload compares two configs key by key (`diff`): keys
RELOAD marks live are applied to the running node, the others wait for a restart
(`merge_live` builds the config to run meanwhile).
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from l2vpn.errors import ConfigError
from l2vpn.frame import is_group, parse_mac
from l2vpn.vlan import ACCESS, TRUNK, VID_MAX, VID_MIN, VlanPolicy, parse_vids

ROLES = ("hub", "spoke")
DEFAULT_PORT = 7443
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEEPALIVE_TIMEOUT_MAX_S = 30.0
LOG_LEVELS = ("debug", "info", "warning", "error")
ADMIT_ANY, ADMIT_LISTED = "any", "listed"   # admit: any spoke our CA signed, or only those ports: lists
HUB_PORT_NAME = "hub"   # the hub's own TAP, as ports: and the guards' trusted lists name it

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True)
class TLSConfig:
    ca: Path
    cert: Path
    key: Path
    crl: Path | None = None  # PEM CRL; re-read on SIGHUP and whenever the file changes


@dataclass(frozen=True)
class TapConfig:
    name: str
    mtu: int = 1500
    address: IPInterface | None = None
    bridge: str | None = None
    mac: bytes | None = None  # None: derived later from the node name
    offload: bool = True  # IFF_VNET_HDR + TUNSETOFFLOAD: GSO super-frames from the kernel


@dataclass(frozen=True)
class ListenConfig:
    address: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    offload: bool = True  # offer CAP_VNET_HDR to spokes: carry super-frames whole


@dataclass(frozen=True)
class HubEndpoint:
    address: str
    port: int = DEFAULT_PORT
    server_name: str | None = None  # None: trust any hub certificate our CA issued
    offload: bool = True  # offer CAP_VNET_HDR to the hub: carry super-frames whole
    flood_limits: bool = True  # offer CAP_FLOOD_LIMITS: drop floods past the hub's limits here


@dataclass(frozen=True)
class StormConfig:
    """Frames per second each port may flood, per class; 0 turns that limit off.

    Measured in netns-lab/busy_lan.py: see the README's storm-control section."""
    broadcast_pps: int = 1000
    multicast_pps: int = 2000
    unknown_unicast_pps: int = 2000


@dataclass(frozen=True)
class GuardConfig:
    trusted: tuple[str, ...] = ()  # port names (node names; the hub's own TAP is "hub")


@dataclass(frozen=True)
class SwitchConfig:
    aging_s: float = 300.0
    max_entries: int = 65536
    max_macs_per_port: int = 1024
    mac_move_holddown_s: float = 5.0
    storm: StormConfig = StormConfig()
    loop_detection: bool = True
    dhcp_guard: GuardConfig | None = None  # None: off
    ra_guard: GuardConfig | None = None


@dataclass(frozen=True)
class ManagementConfig:
    socket: Path


@dataclass(frozen=True)
class HostPort:
    host: str   # an IP literal
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class MetricsConfig:
    listen: HostPort | None = None  # None: no HTTP endpoint (`l2vpn metrics` still answers)


@dataclass(frozen=True)
class KeepaliveConfig:
    interval_s: float = 5.0
    timeout_s: float = 20.0


@dataclass(frozen=True)
class ReconnectConfig:
    initial_s: float = 1.0
    max_s: float = 30.0


@dataclass(frozen=True)
class PortConfig:
    """One switch port's own settings (ports.NAME); None takes the switch: setting."""
    vlan: VlanPolicy | None = None   # None: transparent, frames keep their tags
    max_macs: int | None = None      # None: switch.max_macs_per_port
    storm: StormConfig | None = None  # None: switch.storm; keys left out are filled from it


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True)
class HubConfig:
    path: Path
    node: str
    listen: ListenConfig
    tls: TLSConfig
    tap: TapConfig | None
    switch: SwitchConfig
    management: ManagementConfig
    keepalive: KeepaliveConfig
    user: str | None = None   # drop to this user once TAP and sockets are open
    group: str | None = None
    metrics: MetricsConfig = MetricsConfig()
    admit: str = ADMIT_ANY
    ports: dict[str, PortConfig] = field(default_factory=dict)  # port name -> its own settings
    log: LogConfig = LogConfig()

    def port_settings(self, name: str) -> PortConfig:
        """Port `name`'s settings with the switch: ones filled in where it has none."""
        own = self.ports.get(name, PortConfig())
        return PortConfig(
            own.vlan,
            self.switch.max_macs_per_port if own.max_macs is None else own.max_macs,
            self.switch.storm if own.storm is None else own.storm)


@dataclass(frozen=True)
class SpokeConfig:
    path: Path
    node: str
    hub: HubEndpoint
    tls: TLSConfig
    tap: TapConfig
    management: ManagementConfig
    keepalive: KeepaliveConfig
    reconnect: ReconnectConfig
    user: str | None = None
    group: str | None = None
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()


# --- checks: each takes the YAML value and the config folder, returns the parsed value
# --- or raises Invalid(what was expected).


_NOTHING = object()
_UNKNOWN_KEY = object()  # what a nested mapping "got" when it holds a key it does not know


class Invalid(Exception):
    """A value failed its check; the argument says what was expected.

    A check of a nested mapping names the inner `key` (dotted) and the value it `got`."""

    def __init__(self, expected: str, key: str | None = None, got=_NOTHING):
        super().__init__(expected)
        self.key = key
        self.got = got


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_range(low: int, high: int | None = None) -> Callable:
    if high is None:
        expected = f"an integer >= {low}"
    else:
        expected = f"an integer {low}-{high}"

    def check(value, base):
        if not _is_int(value) or value < low or (high is not None and value > high):
            raise Invalid(expected)
        return value

    return check


def positive_seconds(high_s: float | None = None, why: str = "") -> Callable:
    expected = "a number of seconds > 0"
    if high_s is not None:
        expected += f" and <= {high_s:g}{why}"

    def check(value, base):
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise Invalid(expected)
        if high_s is not None and value > high_s:
            raise Invalid(expected)
        return float(value)

    return check


def node_name(value, base) -> str:
    if not isinstance(value, str) or not NODE_NAME.fullmatch(value):
        raise Invalid("a name of 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def path_value(value, base: Path) -> Path:
    if not isinstance(value, str) or not value or "\0" in value:
        raise Invalid("a file path")
    path = Path(value)
    return path if path.is_absolute() else base / path


def ip_literal(value, base) -> str:
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else None))
    except ValueError:
        raise Invalid("an IPv4 or IPv6 address like 0.0.0.0 or '::'") from None


_HOST_PORT = re.compile(r"\[([^\[\]]+)\]:([0-9]{1,5})|([^:\[\]]+):([0-9]{1,5})")


def host_port(value, base) -> HostPort:
    """HOST:PORT with an IP literal for HOST; an IPv6 one in brackets, [::1]:9477."""
    expected = "an address and port like 127.0.0.1:9477 or [::1]:9477"
    m = _HOST_PORT.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise Invalid(expected)
    bracketed = m.group(1) is not None
    text, port = (m.group(1), m.group(2)) if bracketed else (m.group(3), m.group(4))
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise Invalid(expected) from None
    if (addr.version == 6) != bracketed or not 1 <= int(port) <= 65535:
        raise Invalid(expected)
    return HostPort(str(addr), int(port))


_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def host(value, base) -> str:
    """An IP literal or a DNS name; a dotted all-digit name is a mistyped IPv4 address."""
    expected = "an IP address or DNS name like 198.18.0.1 or hub.example.net"
    if not isinstance(value, str):
        raise Invalid(expected)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if (
        len(value) > 253
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
        or all(label.isdigit() for label in labels)
    ):
        raise Invalid(expected)
    return value


def ifname(value, base) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 15
        or value in (".", "..")
        or any(c in "/:" or c.isspace() for c in value)
    ):
        raise Invalid("an interface name of 1-15 characters without '/', ':' or spaces")
    return value


def interface_address(value, base) -> IPInterface:
    expected = "an address with prefix length like 198.19.0.2/24"
    if not isinstance(value, str) or "/" not in value:
        raise Invalid(expected)
    try:
        return ipaddress.ip_interface(value)
    except ValueError:
        raise Invalid(expected) from None


def non_negative_seconds(value, base) -> float:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise Invalid("a number of seconds >= 0")
    return float(value)


def node_names(value, base) -> tuple[str, ...]:
    expected = "a list of node names like [site-a, hub] (the hub's own TAP is hub)"
    if not isinstance(value, list):
        raise Invalid(expected)
    for name in value:
        if not isinstance(name, str) or not NODE_NAME.fullmatch(name):
            raise Invalid(expected, got=name)
    if len(set(value)) != len(value):
        raise Invalid(expected + " without repeats", got=value)
    return tuple(value)


_ACCOUNT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10}")


def account(value, base) -> str:
    """A user or group name (or numeric id); whether it exists is checked at start."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        value = str(value)
    if not isinstance(value, str) or not _ACCOUNT.fullmatch(value):
        raise Invalid("a user or group name like l2vpn, or a numeric id")
    return value


def _mapping_of(value, known) -> dict:
    """A nested mapping's value (absent = empty) holding only the `known` keys, or Invalid."""
    names = ", ".join(known)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise Invalid(f"a mapping with keys: {names}")
    for name in value:
        if name not in known:
            raise Invalid(f"one of: {names}", key=_key_text(name), got=_UNKNOWN_KEY)
    return value


def mapping(keys: tuple, make: type) -> Callable:
    """A check for a nested mapping: each inner key checked, unknown keys refused."""
    known = tuple(k.name for k in keys)

    def check(value, base):
        value = _mapping_of(value, known)
        values = {}
        for k in keys:
            if k.name not in value:
                if k.required:
                    raise Invalid("a value (required key is missing)", key=k.name, got=None)
                continue
            try:
                values[k.name] = k.check(value[k.name], base)
            except Invalid as exc:
                inner = k.name + (f".{exc.key}" if exc.key else "")
                got = value[k.name] if exc.got is _NOTHING else exc.got
                raise Invalid(exc.args[0], key=inner, got=got) from None
        return make(**values)

    return check


def boolean(value, base) -> bool:
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


def unicast_mac(value, base) -> bytes:
    expected = 'a quoted unicast MAC like "02:00:00:00:00:01"'
    if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}", value):
        raise Invalid(expected)
    mac = parse_mac(value)
    if is_group(mac) or mac == bytes(6):
        raise Invalid(expected + " (not multicast, broadcast or all zeros)")
    return mac


def one_of(*choices: str) -> Callable:
    expected = " or ".join(choices) if len(choices) == 2 else "one of: " + ", ".join(choices)

    def check(value, base):
        if not isinstance(value, str) or value not in choices:
            raise Invalid(expected)
        return value

    return check


def vlan_id(value, base) -> int:
    if not _is_int(value) or not VID_MIN <= value <= VID_MAX:
        raise Invalid(f"a VLAN id {VID_MIN}-{VID_MAX}")
    return value


def vlan_ids(value, base) -> frozenset:
    try:
        return parse_vids(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


_VLAN_KEYS = ("mode", "vid", "allowed", "native")
_VLAN_MODE = one_of(ACCESS, TRUNK)
# mode -> (keys it needs, keys it refuses and why)
_VLAN_SHAPES = {
    ACCESS: (("vid",), ("allowed", "native"), "allowed and native are for mode: trunk"),
    TRUNK: (("allowed",), ("vid",), "vid is for mode: access; a trunk's untagged VLAN is native"),
}
_VLAN_CHECKS = {"vid": vlan_id, "allowed": vlan_ids, "native": vlan_id}


def vlan_policy(value, base) -> VlanPolicy:
    """{mode: access, vid: V} or {mode: trunk, allowed: [...], native: N}."""
    value = _mapping_of(value, _VLAN_KEYS)
    try:
        mode = _VLAN_MODE(value.get("mode"), base)
    except Invalid as exc:
        raise Invalid(exc.args[0], key="mode", got=value.get("mode")) from None
    needs, refuses, why = _VLAN_SHAPES[mode]
    for name in refuses:
        if name in value:
            raise Invalid(f"to be left out with mode: {mode} ({why})", key=name, got=value[name])
    values = {"mode": mode}
    for name in ("vid", "allowed", "native"):
        if name in value or name in needs:
            try:
                values[name] = _VLAN_CHECKS[name](value.get(name), base)
            except Invalid as exc:
                why = "" if name in value else f" (mode: {mode} needs it)"
                raise Invalid(exc.args[0] + why, key=name, got=value.get(name)) from None
    return VlanPolicy(**values)


# --- the schema


@dataclass(frozen=True)
class Key:
    name: str
    check: Callable[[Any, Path], Any]
    required: bool = False
    roles: frozenset = frozenset(ROLES)   # top-level keys only: the configs that take it


@dataclass(frozen=True)
class Entries:
    """The names of a section of named entries: `what` they are (for messages), and the
    check of each name."""

    what: str
    check: Callable[[Any, Path], Any]


@dataclass(frozen=True)
class Section:
    """One top-level key holding a mapping, built into `make`.

    `default` builds the section when it is absent (given the parsed top-level scalars);
    None means an absent section stays None. `relate` checks keys against each other on
    the built object and returns (key, what was expected) pairs. With `entries` set, the
    mapping holds named entries, each a mapping of `keys` built into `make`, and the
    section is built into a dict of them. `complete` takes the checked values of the
    section (or of one entry) and the sections built before it, and returns the values
    to build from (a port's storm limits are filled in from switch.storm's).
    """

    name: str
    keys: tuple[Key, ...]
    make: type
    roles: frozenset = frozenset(ROLES)
    required_in: frozenset = frozenset()
    default: Callable[[dict], Any] | None = None
    relate: Callable[[Any], list[tuple[str, str]]] | None = None
    entries: Entries | None = None
    complete: Callable[[dict, dict], dict] | None = None

    @property
    def expected(self) -> str:
        """What the section's value should be, for messages."""
        names = ", ".join(k.name for k in self.keys)
        if self.entries is None:
            return f"a mapping with keys: {names}"
        return f"a mapping of {self.entries.what} to mappings with keys: {names}"


def _keepalive_relation(ka: KeepaliveConfig):
    if ka.timeout_s <= ka.interval_s:
        return [("timeout_s", f"more than interval_s ({ka.interval_s:g})")]
    return []


def _reconnect_relation(rc: ReconnectConfig):
    if rc.max_s < rc.initial_s:
        return [("max_s", f"at least initial_s ({rc.initial_s:g})")]
    return []


def _default_management(top: dict) -> ManagementConfig:
    return ManagementConfig(socket=Path(f"/run/l2vpn/{top['node']}.sock"))


def _complete_port(values: dict, built: dict) -> dict:
    if "storm" in values:   # the storm limits a port leaves out are switch.storm's
        values = {**values, "storm": replace(built["switch"].storm, **values["storm"])}
    return values


PORT = int_range(1, 65535)
HUB_ONLY = frozenset({"hub"})
STORM_KEYS = (Key("broadcast_pps", int_range(0)), Key("multicast_pps", int_range(0)),
              Key("unknown_unicast_pps", int_range(0)))

# Top-level scalar keys; each lands in the config dataclass field of the same name.
TOP_KEYS: tuple[Key, ...] = (Key("node", node_name, required=True), Key("user", account),
                             Key("group", account),
                             Key("admit", one_of(ADMIT_ANY, ADMIT_LISTED), roles=HUB_ONLY))

SECTIONS: tuple[Section, ...] = (
    Section(
        "listen",
        (Key("address", ip_literal), Key("port", PORT), Key("offload", boolean)),
        ListenConfig,
        roles=HUB_ONLY,
        default=lambda top: ListenConfig(),
    ),
    Section(
        "hub",
        (
            Key("address", host, required=True),
            Key("port", PORT),
            Key("server_name", host),
            Key("offload", boolean),
            Key("flood_limits", boolean),
        ),
        HubEndpoint,
        roles=frozenset({"spoke"}),
        required_in=frozenset({"spoke"}),
    ),
    Section(
        "tls",
        (Key("ca", path_value, True), Key("cert", path_value, True), Key("key", path_value, True),
         Key("crl", path_value)),
        TLSConfig,
        required_in=frozenset(ROLES),
    ),
    Section(
        "tap",
        (
            Key("name", ifname, required=True),
            Key("mtu", int_range(576, 65535)),
            Key("address", interface_address),
            Key("bridge", ifname),
            Key("mac", unicast_mac),
            Key("offload", boolean),
        ),
        TapConfig,
        required_in=frozenset({"spoke"}),
    ),
    Section(
        "switch",
        (
            Key("aging_s", positive_seconds()),
            Key("max_entries", int_range(1)),
            Key("max_macs_per_port", int_range(1)),
            Key("mac_move_holddown_s", non_negative_seconds),
            Key("storm", mapping(STORM_KEYS, StormConfig)),
            Key("loop_detection", boolean),
            Key("dhcp_guard", mapping((Key("trusted", node_names),), GuardConfig)),
            Key("ra_guard", mapping((Key("trusted", node_names),), GuardConfig)),
        ),
        SwitchConfig,
        roles=HUB_ONLY,
        default=lambda top: SwitchConfig(),
    ),
    Section(   # after switch: a port's settings are completed from the switch's
        "ports",
        (
            Key("vlan", vlan_policy),
            Key("max_macs", int_range(1)),
            Key("storm", mapping(STORM_KEYS, dict)),   # the keys given; _complete_port fills in
        ),
        PortConfig,
        roles=HUB_ONLY,
        default=lambda top: {},
        entries=Entries("port names (a spoke's node name, or hub for the hub's own TAP)",
                        node_name),
        complete=_complete_port,
    ),
    Section(
        "management",
        (Key("socket", path_value),),
        ManagementConfig,
        default=_default_management,
    ),
    Section(
        "keepalive",
        (
            Key("interval_s", positive_seconds()),
            Key(
                "timeout_s",
                positive_seconds(KEEPALIVE_TIMEOUT_MAX_S, " so a dead peer is noticed within 30 s"),
            ),
        ),
        KeepaliveConfig,
        default=lambda top: KeepaliveConfig(),
        relate=_keepalive_relation,
    ),
    Section(
        "reconnect",
        (Key("initial_s", positive_seconds()), Key("max_s", positive_seconds())),
        ReconnectConfig,
        roles=frozenset({"spoke"}),
        default=lambda top: ReconnectConfig(),
        relate=_reconnect_relation,
    ),
    Section(
        "metrics",
        (Key("listen", host_port),),
        MetricsConfig,
        default=lambda top: MetricsConfig(),
    ),
    Section(
        "log",
        (Key("level", one_of(*LOG_LEVELS)),),
        LogConfig,
        default=lambda top: LogConfig(),
    ),
)

_CONFIG_CLASS = {"hub": HubConfig, "spoke": SpokeConfig}

LIVE, RESTART = "live", "restart"

# What a reload does with each top-level key. LIVE: applied to the running node (a spoke
# reconnects with a changed hub:). RESTART: reported, and the old value kept until the
# node restarts (they name the devices, sockets and identity it holds, or privileges it
# has already given up).
RELOAD: dict[str, str] = {
    "node": RESTART, "user": RESTART, "group": RESTART, "listen": RESTART, "tap": RESTART,
    "management": RESTART,
    "admit": LIVE, "hub": LIVE, "tls": LIVE, "switch": LIVE, "ports": LIVE,
    "keepalive": LIVE, "reconnect": LIVE, "metrics": LIVE, "log": LIVE,
}


# --- loading


def load_hub(path) -> HubConfig:
    """Read and check a hub config; raises ConfigError listing every problem."""
    return _load(Path(path), "hub")


def load_spoke(path) -> SpokeConfig:
    """Read and check a spoke config; raises ConfigError listing every problem."""
    return _load(Path(path), "spoke")


def load(path, role: str) -> HubConfig | SpokeConfig:
    """Read a config for `role` ("hub" or "spoke")."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    return _load(Path(path), role)


def _show(value) -> str:
    if value is _UNKNOWN_KEY:
        return "an unknown key"
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _key_text(name) -> str:
    """An unknown key as typed, or quoted when it would not read as one plain word."""
    if isinstance(name, str) and name.isprintable() and name and not any(c.isspace() for c in name):
        return name
    return repr(name)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which YAML would silently let win."""


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (each key may appear once)", key_node.start_mark
            )
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_document(path: Path):
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or exc
        raise ConfigError(f"{path}: cannot read: {reason} (check the path and permissions)") from None
    try:
        doc = yaml.load(data, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}invalid YAML: {_one_line(exc.problem)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_one_line(exc)}") from None
    if not isinstance(doc, dict):
        found = "an empty file" if doc is None else _show(doc)
        raise ConfigError(
            f"{path}: expected a mapping of settings (node: ..., tls: ...) at the top level, got {found}"
        )
    return doc


def _check_keys(doc: dict, keys: tuple[Key, ...], prefix: str, base: Path, problems: list, where: str) -> dict:
    values = {}
    for key in keys:
        if key.name not in doc:
            if key.required:
                problems.append(f"{where}: {prefix}{key.name}: required key is missing")
            continue
        try:
            values[key.name] = key.check(doc[key.name], base)
        except Invalid as exc:
            name = key.name + (f".{exc.key}" if exc.key else "")
            got = doc[key.name] if exc.got is _NOTHING else exc.got
            problems.append(f"{where}: {prefix}{name}: expected {exc.args[0]}, got {_show(got)}")
    return values


def _check_mapping(value, section: Section, prefix: str, base: Path, problems: list, where: str):
    """Check one mapping of `section.keys` (the section's own, or one entry's); returns
    its checked values, or None when it is not a mapping."""
    names = ", ".join(k.name for k in section.keys)
    value = {} if value is None else value
    if not isinstance(value, dict):
        problems.append(f"{where}: {prefix}: expected a mapping with keys: {names}, got {_show(value)}")
        return None
    for name in value:
        if name not in {k.name for k in section.keys}:
            problems.append(f"{where}: {prefix}.{_key_text(name)}: unknown key (expected one of: {names})")
    before = len(problems)
    values = _check_keys(value, section.keys, f"{prefix}.", base, problems, where)
    if section.relate and len(problems) == before:
        built = section.make(**values)
        for key, expected in section.relate(built):
            found = _show(value[key]) if key in value else f"{getattr(built, key):g} (the default)"
            problems.append(f"{where}: {prefix}.{key}: expected {expected}, got {found}")
    return values


def _check_entries(value: dict, section: Section, base: Path, problems: list, where: str) -> dict:
    """Check a section of named entries; returns name -> checked values of the good ones."""
    entries = {}
    for name, entry in value.items():
        try:
            name = section.entries.check(name, base)
        except Invalid as exc:
            problems.append(f"{where}: {section.name}.{_key_text(name)}: expected {exc.args[0]}, got {_show(name)}")
            continue
        values = _check_mapping(entry, section, f"{section.name}.{name}", base, problems, where)
        if values is not None:
            entries[name] = values
    return entries


def _build(section: Section, values: dict, built: dict):
    if section.complete:
        values = section.complete(values, built)
    return section.make(**values)


def _load(path: Path, role: str):
    doc = _read_document(path)
    base = path.absolute().parent
    where = str(path)
    problems: list[str] = []
    top_keys = tuple(k for k in TOP_KEYS if role in k.roles)
    sections = [s for s in SECTIONS if role in s.roles]

    allowed_names = [k.name for k in top_keys] + [s.name for s in sections]
    allowed = ", ".join(allowed_names)
    other_role = {k.name for k in TOP_KEYS if role not in k.roles} | {s.name for s in SECTIONS if role not in s.roles}
    other = "hub" if role == "spoke" else "spoke"
    for name in doc:
        if name not in allowed_names:
            hint = f"; {name} belongs in a {other} config" if name in other_role else ""
            problems.append(f"{path}: {_key_text(name)}: unknown key in a {role} config (expected one of: {allowed}){hint}")

    top = _check_keys(doc, top_keys, "", base, problems, where)
    if "group" in top and "user" not in doc:   # a bad user: is its own problem
        problems.append(f"{path}: group: needs user: too (group alone would leave the process root)")
    ports = {} if doc.get("ports") is None else doc["ports"]   # not a mapping: its own problem
    if top.get("admit") == ADMIT_LISTED and isinstance(ports, dict) and \
            not any(name != HUB_PORT_NAME for name in ports):
        problems.append(f"{path}: admit: listed refuses every spoke unless ports: lists them "
                        "(one entry per spoke, like ports: {site-a: {}}), or use admit: any")

    raw: dict[str, dict] = {}
    for section in sections:
        if section.name not in doc:
            if role in section.required_in:
                problems.append(f"{path}: {section.name}: required section is missing (expected {section.expected})")
            continue
        value = {} if doc[section.name] is None else doc[section.name]
        if not isinstance(value, dict):
            problems.append(f"{path}: {section.name}: expected {section.expected}, got {_show(value)}")
        elif section.entries is None:
            raw[section.name] = _check_mapping(value, section, section.name, base, problems, where)
        else:
            raw[section.name] = _check_entries(value, section, base, problems, where)

    if problems:
        raise ConfigError(problems)

    built = {"path": path, **top}
    for section in sections:   # in table order: `complete` sees the sections before it
        if section.name not in raw:
            built[section.name] = section.default(top) if section.default else None
        elif section.entries is None:
            built[section.name] = _build(section, raw[section.name], built)
        else:
            built[section.name] = {name: _build(section, values, built)
                                   for name, values in raw[section.name].items()}
    return _CONFIG_CLASS[role](**built)


# --- reloading


@dataclass(frozen=True)
class ConfigDiff:
    """What a reload changes, as dotted keys (switch.storm.broadcast_pps, ports.site-a)."""

    changed: list[str]         # applied live
    needs_restart: list[str]   # reported; the old value stays until the node restarts


_WHOLE = (HostPort, VlanPolicy)   # values that change as one key, not key by key


def diff(old: HubConfig | SpokeConfig, new: HubConfig | SpokeConfig) -> ConfigDiff:
    """The keys that differ between two configs of one role, split by RELOAD."""
    _same_role(old, new)
    changed, needs_restart = [], []
    for f in fields(old):
        if f.name != "path":
            keys = _changed_keys(getattr(old, f.name), getattr(new, f.name), f.name)
            (changed if RELOAD[f.name] == LIVE else needs_restart).extend(keys)
    return ConfigDiff(changed, needs_restart)


def merge_live(old: HubConfig | SpokeConfig, new: HubConfig | SpokeConfig) -> HubConfig | SpokeConfig:
    """The config to run after a reload: `new` with `old`'s values for the RESTART keys."""
    _same_role(old, new)
    return replace(new, **{f.name: getattr(old, f.name) for f in fields(old)
                           if RELOAD.get(f.name) == RESTART})


def _same_role(old, new) -> None:
    if type(old) is not type(new) or type(old) not in _CONFIG_CLASS.values():
        raise ValueError(f"expected two hub or two spoke configs, not {type(old).__name__} "
                         f"and {type(new).__name__}")


def _changed_keys(old, new, key: str) -> list[str]:
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):   # named entries: ports
        return [k for name in sorted(old.keys() | new.keys())
                for k in (_changed_keys(old[name], new[name], f"{key}.{name}")
                          if name in old and name in new else [f"{key}.{name}"])]
    if type(old) is type(new) and is_dataclass(old) and not isinstance(old, _WHOLE):
        return [k for f in fields(old)
                for k in _changed_keys(getattr(old, f.name), getattr(new, f.name), f"{key}.{f.name}")]
    return [key]
