"""l2vpn: a hub-and-spoke layer-2 Ethernet bridging VPN over mutually authenticated TLS."""

__version__ = "0.1.0"
