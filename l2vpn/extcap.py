"""Wireshark's extcap entry point: the ports of the l2vpn nodes on this machine listed as
capture interfaces, captured live through the management socket.

Wireshark runs every program in its extcap folder with `--extcap-interfaces`; link this
one there (`ln -s $(command -v l2vpn-extcap) ~/.local/lib/wireshark/extcap/`). Each
running node found (its management socket: /run/l2vpn/*.sock, or the paths and patterns
in $L2VPN_SOCKETS, separated by ':') gives an interface per port that is up,
`l2vpn:<node>:<port>`, and one for all its ports, `l2vpn:<node>`. The sockets are 0600:
Wireshark lists and captures them only when run as root.
"""

import argparse
import glob
import os
import sys

from l2vpn import __version__, capture
from l2vpn.errors import L2VPNError
from l2vpn.management import query, request

PREFIX = "l2vpn"
DEFAULT_SOCKETS = "/run/l2vpn/*.sock"
LIST_TIMEOUT_S = 2.0


def sockets(environ=os.environ) -> list[str]:
    """The management sockets to ask: $L2VPN_SOCKETS (paths or globs), else /run/l2vpn."""
    patterns = (environ.get("L2VPN_SOCKETS") or DEFAULT_SOCKETS).split(":")
    found = []
    for pattern in filter(None, patterns):
        for path in sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]:
            if path not in found:
                found.append(path)
    return found


def nodes(paths, ask=query) -> list[tuple[str, str, list[str]]]:
    """(socket, node, ports up) of each node that answers; the others are skipped."""
    out = []
    for path in paths:
        try:
            reply = ask(path, capture.LIST_REQUEST, timeout_s=LIST_TIMEOUT_S)
        except L2VPNError:
            continue
        if isinstance(reply, dict) and isinstance(reply.get("ports"), list) and reply.get("node"):
            out.append((path, reply["node"], reply["ports"]))
    return out


def interfaces(found) -> list[str]:
    """The extcap `interface` lines for the nodes found."""
    lines = []
    for _path, node, ports in found:
        lines.append(f"interface {{value={PREFIX}:{node}}}{{display=l2vpn {node}: all ports}}")
        lines += [f"interface {{value={PREFIX}:{node}:{p}}}{{display=l2vpn {node}: port {p}}}"
                  for p in ports]
    return lines


def parse_interface(value: str) -> tuple[str, str | None]:
    """`l2vpn:<node>[:<port>]` -> (node, port or None for all)."""
    parts = value.split(":")
    if parts[0] != PREFIX or len(parts) not in (2, 3) or not all(parts[1:]):
        raise L2VPNError(f"not an l2vpn interface: {value!r} (l2vpn:NODE or l2vpn:NODE:PORT)")
    return parts[1], (parts[2] if len(parts) == 3 else None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2vpn-extcap",
                                description="Wireshark extcap for l2vpn switch ports.")
    p.add_argument("--extcap-interfaces", action="store_true")
    p.add_argument("--extcap-version", metavar="VERSION")
    p.add_argument("--extcap-interface", metavar="IFACE")
    p.add_argument("--extcap-dlts", action="store_true")
    p.add_argument("--extcap-config", action="store_true")
    p.add_argument("--extcap-capture-filter", metavar="FILTER")
    p.add_argument("--capture", action="store_true")
    p.add_argument("--fifo", metavar="PATH")
    p.add_argument("--gso", action="store_true", help="keep super-frames whole")
    return p


def main(argv=None, environ=os.environ, stdout=None) -> int:
    stdout = stdout or sys.stdout
    # Wireshark may pass options newer than this program knows: ignore them.
    args, _unknown = build_parser().parse_known_args(argv)
    try:
        return _run(args, environ, stdout)
    except L2VPNError as e:
        print(f"l2vpn-extcap: {e}", file=sys.stderr)
        return 1


def _run(args, environ, stdout) -> int:
    if args.extcap_interfaces:
        print(f"extcap {{version={__version__}}}{{display=l2vpn switch ports}}", file=stdout)
        for line in interfaces(nodes(sockets(environ))):
            print(line, file=stdout)
        return 0
    if args.extcap_interface is None:
        raise L2VPNError("pass --extcap-interfaces, or --extcap-interface with "
                         "--extcap-dlts, --extcap-config or --capture")
    node, port = parse_interface(args.extcap_interface)
    if args.extcap_dlts:
        print("dlt {number=1}{name=EN10MB}{display=Ethernet}", file=stdout)
        return 0
    if args.extcap_config:
        print("arg {number=0}{call=--gso}{display=Keep super-frames whole}"
              "{tooltip=As the node carries them (up to 64 KiB, checksums partial), instead "
              "of segmented as a host on the wire sees them}{type=boolflag}{default=false}",
              file=stdout)
        return 0
    if args.capture:
        if not args.fifo:
            raise L2VPNError("--capture needs --fifo PATH")
        if args.extcap_capture_filter:
            raise L2VPNError("capture filters are not supported: use a display filter")
        return _capture(node, port, args.gso, args.fifo, environ)
    raise L2VPNError("nothing to do: pass --extcap-dlts, --extcap-config or --capture")


def _capture(node, port, gso, fifo, environ) -> int:
    found = [path for path, name, _ports in nodes(sockets(environ)) if name == node]
    if not found:
        raise L2VPNError(f"no running l2vpn node {node} found here (sockets asked: "
                         f"{', '.join(sockets(environ)) or 'none'})")
    sock = request(found[0], capture.request_line([port] if port else [], gso))
    out = capture.Output(fifo)
    try:
        with capture.stop_signals() as stop:
            summary = capture.receive(sock, out.write, stop=stop)
    except capture.CaptureRefused as e:
        raise L2VPNError(str(e)) from None
    finally:
        sock.close()
        out.close()
    print(f"l2vpn-extcap: {summary.line()}", file=sys.stderr)
    return 0
