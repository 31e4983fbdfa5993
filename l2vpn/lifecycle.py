"""A session's lifecycle: its states and the one table of the ways between them; pure.

CONNECTING -> HANDSHAKE -> HELLO -> UP is the way in: the TCP connection comes up (or
was accepted), TLS secures it, each side's hello is accepted. Saying goodbye in HELLO or
UP leads to CLOSING, where the session reads nothing and waits for its last words to
leave (or a linger to pass); ENDED leads from anywhere to CLOSED, which has no way out.

The state values are what `status` shows as a session's `state`.
"""

CONNECTING = "connecting"
HANDSHAKE = "handshake"
HELLO = "hello"
UP = "up"
CLOSING = "closing"
CLOSED = "closed"

# What happens to a session.
CONNECTED = "connected"        # the TCP connection is up (or was accepted)
SECURED = "secured"            # the TLS handshake is done and the peer's certificate accepted
GREETED = "greeted"            # the peer's hello is accepted
GOODBYE_SAID = "goodbye_said"  # our goodbye is queued: nothing more goes in or out
ENDED = "ended"                # the socket is closed, whatever the reason

_TRANSITIONS = {
    CONNECTING: {CONNECTED: HANDSHAKE, ENDED: CLOSED},
    HANDSHAKE: {SECURED: HELLO, ENDED: CLOSED},
    HELLO: {GREETED: UP, GOODBYE_SAID: CLOSING, ENDED: CLOSED},
    UP: {GOODBYE_SAID: CLOSING, ENDED: CLOSED},
    CLOSING: {ENDED: CLOSED},
    CLOSED: {},
}


class IllegalTransition(RuntimeError):
    """A session was driven along a way its table does not have: a bug here, not the
    peer's doing (so it is no ProtocolError, which ends the session with the peer blamed)."""


def advance(state: str, event: str) -> str:
    """The state `event` leads to from `state`."""
    try:
        return _TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(f"no way from {state!r} on {event!r}") from None
