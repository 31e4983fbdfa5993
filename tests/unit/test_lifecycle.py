"""A session's lifecycle table, without a socket."""

import pytest

from l2vpn import lifecycle, transport
from l2vpn.lifecycle import (CLOSED, CLOSING, CONNECTED, CONNECTING, ENDED, GOODBYE_SAID,
                             GREETED, HANDSHAKE, HELLO, SECURED, UP, IllegalTransition,
                             advance)

STATES = (CONNECTING, HANDSHAKE, HELLO, UP, CLOSING, CLOSED)
EVENTS = (CONNECTED, SECURED, GREETED, GOODBYE_SAID, ENDED)


def test_the_way_in_and_out():
    state = CONNECTING
    for event, expected in ((CONNECTED, HANDSHAKE), (SECURED, HELLO), (GREETED, UP),
                            (GOODBYE_SAID, CLOSING), (ENDED, CLOSED)):
        state = advance(state, event)
        assert state == expected


@pytest.mark.parametrize("state", STATES[:-1])
def test_every_state_but_closed_can_end(state):
    assert advance(state, ENDED) == CLOSED


@pytest.mark.parametrize("event", EVENTS)
def test_closed_has_no_way_out(event):
    with pytest.raises(IllegalTransition, match="'closed'"):
        advance(CLOSED, event)


def test_goodbye_only_once_the_hello_exchange_began():
    assert advance(HELLO, GOODBYE_SAID) == CLOSING
    for state in (CONNECTING, HANDSHAKE, CLOSING):
        with pytest.raises(IllegalTransition):
            advance(state, GOODBYE_SAID)


def test_the_table_has_exactly_these_ways():
    ways = {(s, e) for s in STATES for e in EVENTS
            if e in lifecycle._TRANSITIONS[s]}
    assert ways == {(CONNECTING, CONNECTED), (HANDSHAKE, SECURED), (HELLO, GREETED),
                    (HELLO, GOODBYE_SAID), (UP, GOODBYE_SAID)} | {(s, ENDED) for s in STATES[:-1]}


def test_an_illegal_transition_is_no_protocol_error():
    """A bug here must not end a session blaming the peer (ProtocolError does that)."""
    assert not issubclass(IllegalTransition, transport.ProtocolError)
    with pytest.raises(IllegalTransition, match="no way from 'up' on 'secured'"):
        advance(UP, SECURED)


def test_the_state_values_status_shows_and_transport_exports():
    assert (CONNECTING, HANDSHAKE, HELLO, UP, CLOSING, CLOSED) == (
        "connecting", "handshake", "hello", "up", "closing", "closed")
    assert (transport.CONNECTING, transport.HANDSHAKE, transport.HELLO, transport.UP,
            transport.CLOSED) == (CONNECTING, HANDSHAKE, HELLO, UP, CLOSED)
