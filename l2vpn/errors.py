"""One exception tree, so the CLI can turn every error a user can hit into one line."""


class L2VPNError(Exception):
    """Base of every error l2vpn raises on purpose; its message is fit to show a user."""


class ConfigError(L2VPNError):
    """A config file is missing, malformed or names bad values.

    `problems` holds one line per problem ("FILE: key.path: what was expected").
    """

    def __init__(self, problems):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class PKIError(L2VPNError):
    """A certificate, key or CA cannot be made, read or trusted."""


class DeviceError(L2VPNError):
    """A TAP device, bridge or link cannot be opened or set up."""


class TransportError(L2VPNError):
    """A socket cannot be bound or connected (port in use, unreachable)."""


class ProtocolError(L2VPNError):
    """The wire protocol was violated."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids; end that one session."""
