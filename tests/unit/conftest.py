"""Fixtures the unit tests share: an event loop, a small CA with a hub and a spoke, and a
fresh CA per test for tests that change it."""

import pytest

from l2vpn import pki
from l2vpn.eventloop import EventLoop


@pytest.fixture
def loop():
    lp = EventLoop()
    yield lp
    lp.close()


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory):
    """ca.crt/.key, hub.crt/.key (role hub) and site-a.crt/.key (role spoke)."""
    d = tmp_path_factory.mktemp("pki")
    pki.init_ca(d)
    pki.issue(d, "hub", "hub")
    pki.issue(d, "site-a", "spoke")
    return d


@pytest.fixture
def fresh_ca(tmp_path):
    """A CA of this test's own (revoking changes it) with a hub and two spokes."""
    d = tmp_path / "ca"
    pki.init_ca(d)
    pki.issue(d, "hub", "hub")
    pki.issue(d, "site-a", "spoke")
    pki.issue(d, "site-b", "spoke")
    return d
