"""What a node opens on the host, handed in from outside (wireguard-go's `NewDevice(tun,
bind, logger)`): `cli` gives a Hub or Spoke the real edges, tests give it fakes, so a hub
and its spokes can run in one process with no root, no TAP and no network.

Each edge is a factory rather than an open object because the node owns the order of
opening (the things most likely to fail first), the privilege drop after it, and the
close of whatever opened when a later step fails; and a spoke connects again and again.
"""

from dataclasses import dataclass
from typing import Callable

from l2vpn import tap as tapdev
from l2vpn import tcp
from l2vpn.management import ManagementServer


def open_tap(tap_cfg, node: str):
    """The real TAP device a `tap:` section describes (`tap.Tap`)."""
    mac = tap_cfg.mac or tapdev.derive_mac(node, tap_cfg.name)
    return tapdev.Tap.open(tap_cfg.name, mtu=tap_cfg.mtu, mac=mac, address=tap_cfg.address,
                           bridge=tap_cfg.bridge, vnet_hdr=tap_cfg.offload)


def serve_metrics(loop, host: str, port: int, render):
    from l2vpn.metrics import MetricsServer   # prometheus_client loads only when asked for
    return MetricsServer(loop, host, port, render)


@dataclass(frozen=True)
class Edges:
    """Factories for the node's edges; the defaults are the real ones.

    - `tap(tap_cfg, node) -> device` with `fd`, `name`, `mac`, `mtu`, `vnet_hdr`,
      `offloads`, `read_size`, `needs_net_admin_at_close` and `close()` (see tap.Tap);
    - `listen(address, port) -> socket` that accepts connections, non-blocking;
    - `connect(host, port) -> (socket, "host:port")`, a non-blocking connect under way;
    - `management(loop, path, handler) -> server` and
      `metrics(loop, host, port, render) -> server`, each with `close()`;
    - `signals`: whether the node takes SIGTERM, SIGINT and SIGHUP (one process, one set).
    """

    tap: Callable = open_tap
    listen: Callable = tcp.listen
    connect: Callable = tcp.connect
    management: Callable = ManagementServer
    metrics: Callable = serve_metrics
    signals: bool = True


REAL = Edges()
