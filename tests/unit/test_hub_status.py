"""The hub's status streamed over the management socket: the same document as status(),
its MAC table made a slice per pull, so a large table never holds the loop in one go."""

import dataclasses
import json

import pytest
from fakes import FakeClock, FakeSession, edges, eth, hub_config

from l2vpn import hubstatus
from l2vpn.config import SwitchConfig
from l2vpn.eventloop import EventLoop
from l2vpn.hub import Hub


@pytest.fixture
def hub(tmp_path):
    loop = EventLoop(clock=FakeClock())
    cfg = hub_config(tmp_path)
    cfg = dataclasses.replace(cfg, switch=SwitchConfig(max_entries=10_000, max_macs_per_port=10_000))
    h = Hub(cfg, edges(), loop=loop)
    yield h
    loop.close()


def learn(hub, port, first, n):
    for i in range(first, first + n):
        hub.bridge.forward(port, eth(b"\x02\x99\x99\x99\x99\x99", b"\x02" + i.to_bytes(5, "big")))


def pull_all(stream) -> list[bytes]:
    parts = []
    while (part := stream.pull(65536)) is not None:
        parts.append(bytes(part))
    return parts


def test_the_stream_is_the_status_document(hub):
    a, b = FakeSession("site-a"), FakeSession("site-b")
    for s in (a, b):
        hub.admission.on_up(s)
    learn(hub, b, 0, 700)          # b's MACs sort before a's: the port order must win
    learn(hub, a, 5000, 1800)
    parts = pull_all(hub.status_reply())
    doc = json.loads(b"".join(parts))
    assert doc == hub.status()
    assert [m["port"] for m in doc["macs"]] == ["site-a"] * 1800 + ["site-b"] * 700
    rows = parts[1:-1]
    assert len(rows) == -(-2500 // hubstatus.ROWS_PER_PULL)
    assert all(p.count(b'"mac"') == hubstatus.ROWS_PER_PULL for p in rows[:-1])


def test_an_empty_table_streams_an_empty_list(hub):
    assert json.loads(b"".join(pull_all(hub.status_reply())))["macs"] == []


def test_macs_that_go_while_streaming_are_left_out_and_nothing_breaks(hub):
    a, b = FakeSession("site-a"), FakeSession("site-b")
    for s in (a, b):
        hub.admission.on_up(s)
    learn(hub, a, 0, 1500)
    learn(hub, b, 10_000, 1500)
    stream = hub.status_reply()
    parts = [stream.pull(65536), stream.pull(65536)]      # the head, a's first slice
    hub.admission.on_close(a, "gone")                      # a's others go with it
    hub.admission.on_close(b, "gone")                      # and all of b's
    while (part := stream.pull(65536)) is not None:
        parts.append(part)
    macs = json.loads(b"".join(bytes(p) for p in parts))["macs"]
    assert len(macs) == hubstatus.ROWS_PER_PULL and {m["port"] for m in macs} == {"site-a"}
