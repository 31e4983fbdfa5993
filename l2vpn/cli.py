"""The command line: the only place that reads argv, sets up logging and wires real parts.

Exit codes are a contract: 0 ok, 1 runtime failure, 2 usage or config error. Every
error a user can hit is printed as one line (config errors: one line per problem).
"""

import argparse
import json
import os
import sys
from pathlib import Path

from l2vpn import __version__, config, logs, pki
from l2vpn import reload as config_reload
from l2vpn.errors import ConfigError, L2VPNError, PKIError
from l2vpn.sdnotify import Notifier

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _load(path, role):
    return config.load(Path(path), role)


def cmd_node(args) -> int:
    logs.setup(args.verbose)
    role = detect_role(args.config) if args.verb == "run" else args.verb
    cfg = _load(args.config, role)
    if role == "hub":
        from l2vpn.hub import Hub as node_cls
    else:
        from l2vpn.spoke import Spoke as node_cls
    from l2vpn.edges import REAL
    node = node_cls(cfg, REAL, notifier=Notifier.from_environ())
    try:
        node.start()
    except PKIError as e:
        raise ConfigError(config_reload.tls_problem(cfg, str(e))) from None
    node.run()
    return EXIT_OK


def detect_role(path) -> str:
    """A config with a `hub:` section is a spoke's; any other is a hub's."""
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return "hub"  # config.load reports the real problem
    return "spoke" if isinstance(data, dict) and "hub" in data else "hub"


def cmd_check(args) -> int:
    role = args.role or detect_role(args.config)
    try:
        cfg = _load(args.config, role)
    except ConfigError as e:
        for line in e.problems:
            print(line)
        return EXIT_USAGE
    problems = config_reload.problems(cfg, role)
    for line in problems:
        print(line)
    if problems:
        return EXIT_USAGE
    print(f"OK ({role} {cfg.node})")
    return EXIT_OK


def _socket_of(args):
    """The management socket -s names, or -c's config does, or the one in /run/l2vpn."""
    path = args.socket
    if path is None and args.config:
        path = _load(args.config, detect_role(args.config)).management.socket
    if path is None:
        path = _default_socket()
    return path


def cmd_status(args) -> int:
    from l2vpn.management import query
    reply = query(_socket_of(args))
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        print(render_status(reply, list_macs=args.macs))
    return EXIT_OK if "error" not in reply else EXIT_FAIL


def cmd_metrics(args) -> int:
    from l2vpn.management import query
    reply = query(_socket_of(args), "metrics")
    if "metrics" not in reply:
        print(f"error: {reply.get('error', 'the node sent no metrics')}", file=sys.stderr)
        return EXIT_FAIL
    sys.stdout.write(reply["metrics"])
    return EXIT_OK


def cmd_reload(args) -> int:
    from l2vpn.management import query
    reply = query(_socket_of(args), "reload", timeout_s=30.0)
    if "error" in reply:
        print(f"error: {reply['error']}", file=sys.stderr)
        return EXIT_FAIL
    if not reply.get("ok"):
        if args.json:
            print(json.dumps({"problems": reply.get("problems", [])}, indent=2))
        for line in reply.get("problems", []):
            print(line, file=sys.stderr)
        print("l2vpn: reload: the node keeps its running config", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"changed": reply["changed"], "needs_restart": reply["needs_restart"]},
                         indent=2))
        return EXIT_OK
    print(f"changed: {', '.join(reply['changed'])}" if reply["changed"] else "nothing changed")
    if reply["needs_restart"]:
        print(f"needs a restart (old values kept): {', '.join(reply['needs_restart'])}")
    return EXIT_OK


def cmd_capture(args) -> int:
    from l2vpn import capture
    from l2vpn.management import request
    target = args.write
    if target is None:
        if sys.stdout.isatty():
            print("l2vpn: capture: pass -w FILE, or -w - to stream pcapng to a pipe "
                  "(l2vpn capture -w - | tshark -r -)", file=sys.stderr)
            return EXIT_USAGE
        target = "-"
    path = _socket_of(args)
    sock = request(path, capture.request_line(args.port, args.gso, args.count))
    out = capture.Output(target)
    try:
        with capture.stop_signals() as stop:
            summary = capture.receive(
                sock, out.write, count=args.count, seconds=args.seconds, stop=stop,
                note=lambda text: print(f"l2vpn: capture: {text}", file=sys.stderr))
    except capture.CaptureRefused as e:
        print(f"l2vpn: capture: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        sock.close()
        out.close()
    print(f"l2vpn: capture: {summary.line()}", file=sys.stderr)
    return EXIT_OK


def _default_socket():
    folder = Path("/run/l2vpn")
    found = sorted(folder.glob("*.sock")) if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise L2VPNError("no management socket in /run/l2vpn: pass -s SOCKET or -c CONFIG")
    names = ", ".join(p.name for p in found)
    raise L2VPNError(f"several nodes run here ({names}): pass -s SOCKET")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _table(headers, rows) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    return ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
            for row in [headers, *rows]]


MACS_LISTED = 50     # a bigger table is summarised unless `status --macs` asks for it


def render_status(s: dict, list_macs: bool = False) -> str:
    if "error" in s:
        return f"error: {s['error']}"
    lines = [f"{s['role']} {s['node']}, up {_duration(s.get('uptime_s', 0))}"]
    if "hub" in s:
        hub = s["hub"]
        extra = f", last error: {hub['last_error']}" if hub.get("last_error") else ""
        lines.append(f"hub {hub['address']}: {hub['state']}{extra}")
    if "tap" in s:
        t = s["tap"]
        lines.append(f"tap {t['name']} {t['mac']} mtu {t['mtu']}: frames in {t['frames_in']}"
                     f" out {t['frames_out']}, drops {t['drops']}")
    sessions = s.get("sessions", [])
    lines.append("")
    lines.append(f"sessions ({len(sessions)})")
    if sessions:
        rows = [(x["node"], x["cn"], x["remote"], x["state"], _duration(x["uptime_s"]),
                 f"{x['frames_in']}/{x['frames_out']}",
                 f"{_size(x['bytes_in'])}/{_size(x['bytes_out'])}", x["drops"])
                for x in sessions]
        lines += _table(("NODE", "CN", "REMOTE", "STATE", "UP", "FRAMES IN/OUT",
                         "BYTES IN/OUT", "DROPS"), rows)
    lines += _protection(s)
    if "macs" in s:
        macs = s["macs"]
        lines.append("")
        lines.append(f"mac table ({len(macs)})")
        if len(macs) > MACS_LISTED and not list_macs:
            ports = {}
            for m in macs:
                ports[m["port"]] = ports.get(m["port"], 0) + 1
            lines.append("  " + ", ".join(f"{n} behind {p}" for p, n in ports.items()))
            lines.append("  (status --macs lists them all; l2vpn macs --ip/--port/--mac finds one)")
        elif macs:
            lines += _mac_table(macs)
    return "\n".join(lines)


def _mac_table(macs: list[dict]) -> list[str]:
    return _table(("MAC", "PORT", "VLAN", "AGE", "IPS"),
                  [(m["mac"], m["port"], "-" if m.get("vlan") is None else m["vlan"],
                    f"{m['age_s']:.1f}s", " ".join(m.get("ips", [])))
                   for m in macs])


def cmd_macs(args) -> int:
    from l2vpn.management import query
    reply = query(_socket_of(args))
    if "error" in reply:
        print(f"error: {reply['error']}", file=sys.stderr)
        return EXIT_FAIL
    if "macs" not in reply:
        print(f"error: {reply.get('node', 'this node')} is a spoke; its hub knows the hosts",
              file=sys.stderr)
        return EXIT_FAIL
    macs = [m for m in reply["macs"] if _host_matches(m, args)]
    if args.json:
        print(json.dumps(macs, indent=2))
    elif macs:
        print("\n".join(_mac_table(macs)))
    return EXIT_OK if macs else EXIT_FAIL


def _host_matches(m: dict, args) -> bool:
    """The filters of `l2vpn macs`: every one given must hold."""
    if args.port and m["port"] not in args.port:
        return False
    if args.mac and m["mac"] != args.mac:
        return False
    if args.vlan is not None and m.get("vlan") != args.vlan:
        return False
    return not args.ip or args.ip in m.get("ips", [])


def _protection(s: dict) -> list[str]:
    """What protection did: blocked ports and drops by reason on a hub, flood limits on a
    spoke; nothing when there is nothing to say."""
    out = []
    fl = s.get("flood_limits")
    if fl is not None:
        drops = s.get("flood_drops", {})
        out.append(f"flood limits from the hub: {fl['broadcast_pps'] or 'any'} broadcasts/s, "
                   f"{fl['multicast_pps'] or 'any'} multicasts/s; dropped here "
                   f"{drops.get('storm_broadcast', 0)} broadcasts, "
                   f"{drops.get('storm_multicast', 0)} multicasts"
                   + (f", {drops['probe_excess']} frames to the loop-probe address"
                      if drops.get("probe_excess") else ""))
    sw = s.get("switch")
    if sw is not None:
        for b in sw.get("blocked", []):
            out.append(f"blocked: {b['port']} (bridging loop with {b['loop_with']}, for "
                       f"{_duration(b['since_s'])})")
        ports = [(x["node"], x.get("switch")) for x in s.get("sessions", [])]
        if "tap" in s:
            ports.insert(0, ("hub", s["tap"].get("switch")))
        for name, info in ports:
            dropped = {r: n for r, n in (info or {}).get("drops", {}).items() if n}
            if dropped:
                out.append(f"switch drops from {name}: " + ", ".join(
                    f"{n} {r}" for r, n in sorted(dropped.items(), key=lambda kv: -kv[1])))
        plain = [x["node"] for x in s.get("sessions", []) if x.get("flood_limits") is False]
        if plain:
            out.append(f"not limiting floods at their end: {', '.join(plain)}")
    return [""] + out if out else []


def cmd_pki_init(args) -> int:
    crt, key = pki.init_ca(Path(args.dir), common_name=args.cn, days=args.days)
    print(f"CA certificate {crt}\nCA key {key} (keep it offline; mode 0600)")
    return EXIT_OK


def cmd_pki_issue(args) -> int:
    crt, key = pki.issue(Path(args.dir), args.name, args.role, ips=args.ip,
                         dns_names=args.dns, days=args.days)
    print(f"{args.role} certificate {crt}\n{args.role} key {key} (mode 0600)")
    return EXIT_OK


def cmd_pki_revoke(args) -> int:
    d = Path(args.dir)
    crl, serial = pki.revoke(d, args.name, days=args.days)
    listed = len(pki.load_crl(crl, d / pki.CA_CERT).serials)
    moved = [f"{args.name}-{serial:x}{s}" for s in (".crt", ".key")
             if (d / pki.REVOKED_DIR / f"{args.name}-{serial:x}{s}").exists()]
    print(f"revoked {args.name} (serial {serial:#x}); {crl} lists {_certificates(listed)}\n"
          f"{CRL_HINT}\nmoved to {d / pki.REVOKED_DIR}: {', '.join(moved)}")
    return EXIT_OK


def cmd_pki_crl(args) -> int:
    d = Path(args.dir)
    crl = pki.make_crl(d, days=args.days)
    listed = len(pki.load_crl(crl, d / pki.CA_CERT).serials)
    print(f"CRL {crl} lists {_certificates(listed)}\n{CRL_HINT}")
    return EXIT_OK


CRL_HINT = ("put it where the hub's tls.crl points; a running hub picks it up within 1 s "
            "(or send it SIGHUP)")


def _certificates(n: int) -> str:
    return f"{n} revoked certificate{'' if n == 1 else 's'}"


def _mac_arg(text: str) -> str:
    from l2vpn.frame import format_mac, parse_mac
    try:
        return format_mac(parse_mac(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a MAC address: {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return n


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = 0.0
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return x


def _ip_arg(text: str) -> str:
    import ipaddress
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def _vlan_arg(text: str) -> int:
    from l2vpn.vlan import VID_MAX, VID_MIN
    if not text.isdigit() or not VID_MIN <= int(text) <= VID_MAX:
        raise argparse.ArgumentTypeError(f"a VLAN id {VID_MIN}-{VID_MAX}, not {text!r}")
    return int(text)


def _node_args(verb) -> None:
    """-s SOCKET | -c FILE: which running node a verb asks (see _socket_of)."""
    verb.add_argument("-s", "--socket", metavar="SOCKET",
                      help="management socket (default: the one in /run/l2vpn)")
    verb.add_argument("-c", "--config", metavar="FILE", help="take the socket from this config")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="l2vpn", description="Hub-and-spoke layer-2 Ethernet VPN over mutual TLS.")
    p.add_argument("--version", action="version", version=f"l2vpn {__version__}")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    for role, what in (("hub", "run the hub: accept spokes, switch frames"),
                       ("spoke", "run a spoke: carry the local TAP to the hub"),
                       ("run", "run the node the config describes (a spoke if it has a "
                               "hub: section, else the hub); for l2vpn@.service")):
        v = verbs.add_parser(role, help=what, description=what)
        v.add_argument("-c", "--config", required=True, metavar="FILE", help="YAML config")
        v.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        v.set_defaults(func=cmd_node)

    v = verbs.add_parser("check", help="validate a config and its certificate files",
                         description="Validate a config and its TLS files; print OK or "
                                     "every problem found.")
    v.add_argument("-c", "--config", required=True, metavar="FILE")
    v.add_argument("--role", choices=("hub", "spoke"),
                   help="default: spoke if the file has a hub: section, else hub")
    v.set_defaults(func=cmd_check)

    v = verbs.add_parser("status", help="show a running node's sessions and MAC table",
                         description="Ask a running hub or spoke over its management socket.")
    _node_args(v)
    v.add_argument("--json", action="store_true", help="print the raw JSON")
    v.add_argument("--macs", action="store_true",
                   help=f"list every MAC even when there are more than {MACS_LISTED}")
    v.set_defaults(func=cmd_status)

    v = verbs.add_parser("macs", help="find hosts: which port a MAC or IP address is behind",
                         description="List the hub's MAC table with the IP addresses each MAC "
                                     "was seen using (ARP, neighbour discovery, DHCP), "
                                     "filtered. Exit 0 when something matched, 1 when not.")
    _node_args(v)
    v.add_argument("--port", action="append", metavar="P",
                   help="only MACs behind this port (a node name, or hub); repeatable")
    v.add_argument("--mac", type=_mac_arg, metavar="M", help="only this MAC")
    v.add_argument("--ip", type=_ip_arg, metavar="ADDRESS", help="only the MAC(s) using it")
    v.add_argument("--vlan", type=_vlan_arg, metavar="V",
                   help="only MACs in this VLAN (1-4094)")
    v.add_argument("--json", action="store_true", help="print the matching entries as JSON")
    v.set_defaults(func=cmd_macs)

    v = verbs.add_parser("metrics", help="print a running node's Prometheus metrics",
                         description="Ask a running hub or spoke over its management socket "
                                     "for what GET /metrics answers (Prometheus text format).")
    _node_args(v)
    v.set_defaults(func=cmd_metrics)

    v = verbs.add_parser("reload", help="apply a running node's changed config without a restart",
                         description="Ask a running node to read its config and TLS files "
                                     "again. Nothing changes unless all of it is valid (then "
                                     "the problems are printed, exit 2); sessions whose own "
                                     "settings did not change carry on. Prints what changed "
                                     "and what needs a restart.")
    _node_args(v)
    v.add_argument("--json", action="store_true",
                   help='print {"changed": [...], "needs_restart": [...]}')
    v.set_defaults(func=cmd_reload)

    v = verbs.add_parser(
        "capture", help="capture the frames crossing a node's ports, as pcapng",
        description="Stream what crosses the named ports (default: all, including ports "
                    "that come up during the capture), both directions, as pcapng with one "
                    "interface per port and each frame's direction. Frames appear as a host "
                    "on the wire sees them (super-frames segmented, checksums complete). "
                    "Ends on Ctrl-C, -n, --seconds or the node exiting, always with a valid "
                    "file; frames lost because the reader was too slow are counted and "
                    "reported. Needs root (the management socket is 0600).")
    _node_args(v)
    v.add_argument("--port", action="append", metavar="NAME",
                   help="capture this port (hub: `hub` for its TAP, a spoke's name for its "
                        "session; spoke: `hub`); repeatable; default: all")
    v.add_argument("-w", "--write", metavar="FILE|-",
                   help="write pcapng to FILE, or to stdout with -; default: stdout when it "
                        "is not a terminal")
    v.add_argument("-n", "--count", type=_positive_int, metavar="COUNT",
                   help="stop after COUNT frames")
    v.add_argument("--seconds", type=_positive_float, metavar="S", help="stop after S seconds")
    v.add_argument("--gso", action="store_true",
                   help="keep super-frames whole (as the node carries them) instead of "
                        "segmenting them")
    v.set_defaults(func=cmd_capture)

    v = verbs.add_parser("pki", help="make a CA, certificates and the CRL",
                         description="A small CA for l2vpn (certificates from openssl or "
                                     "easy-rsa work too).")
    pv = v.add_subparsers(dest="pki_verb", metavar="PKI_VERB", required=True)
    x = pv.add_parser("init", help="create a CA in DIR", description="Create DIR/ca.crt and "
                      "DIR/ca.key.")
    x.add_argument("dir", metavar="DIR")
    x.add_argument("--cn", default="l2vpn CA", help="CA common name")
    x.add_argument("--days", type=int, default=3650)
    x.set_defaults(func=cmd_pki_init)
    x = pv.add_parser("issue", help="issue a hub or spoke certificate",
                      description="Create DIR/NAME.crt and DIR/NAME.key signed by DIR's CA.")
    x.add_argument("dir", metavar="DIR")
    x.add_argument("name", metavar="NAME", help="node name; becomes CN and SAN DNS name")
    x.add_argument("--role", choices=("hub", "spoke"), required=True)
    x.add_argument("--ip", action="append", default=[], help="extra SAN IP (repeatable)")
    x.add_argument("--dns", action="append", default=[], help="extra SAN DNS (repeatable)")
    x.add_argument("--days", type=int, default=825)
    x.set_defaults(func=cmd_pki_issue)
    x = pv.add_parser("revoke", help="revoke a certificate",
                      description="List DIR/NAME.crt in DIR/crl.pem and move NAME.crt and "
                                  "NAME.key to DIR/revoked/.")
    x.add_argument("dir", metavar="DIR")
    x.add_argument("name", metavar="NAME", help="the name it was issued for")
    x.add_argument("--days", type=int, default=pki.CRL_DAYS, help="CRL nextUpdate, in days")
    x.set_defaults(func=cmd_pki_revoke)
    x = pv.add_parser("crl", help="write or refresh the CRL",
                      description="Write DIR/crl.pem afresh, keeping the revocations it lists.")
    x.add_argument("dir", metavar="DIR")
    x.add_argument("--days", type=int, default=pki.CRL_DAYS, help="CRL nextUpdate, in days")
    x.set_defaults(func=cmd_pki_crl)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except PKIError as e:
        print(f"l2vpn: {e}", file=sys.stderr)
        return EXIT_USAGE
    except L2VPNError as e:
        print(f"l2vpn: {e}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL
