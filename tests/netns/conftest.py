"""Fixtures for the real-network tests: labs built by netns-lab/labnet.py.

`lab` is one session-wide lab (hub with a TAP, spokes site-a/b/c, LAN host lan-a bridged
behind site-a) for tests that only send traffic, built three times: with offloads
everywhere, with none, and mixed (so super-frames meet plain TAPs and plain sessions); `make_lab` builds a fresh lab per test for
tests that kill, restart or misconfigure daemons. Every lab is torn down by a finalizer,
and a failed test prints the daemons' log tails.
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "netns-lab"))

import labnet  # noqa: E402

SHARED_SPOKES = ["site-a", "site-b", "site-c"]
SHARED_LAN = {"site-a": ["lan-a"]}
# Mixed: the hub's TAP is plain but its sessions carry super-frames; site-b has no
# offloads at all; site-c has an offloading TAP behind a plain session (so it segments).
OFFLOAD_MODES = {
    "offload": True,
    "plain": False,
    "mixed": {"hub": {"tap": False, "session": True}, "site-a": True, "site-b": False,
              "site-c": {"tap": True, "session": False}},
}


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request) -> bool:
    return any(getattr(getattr(request.node, "rep_" + w, None), "failed", False)
               for w in ("setup", "call"))


def _dump_logs(lab, why: str) -> None:
    print(f"\n===== {why}: daemon logs of lab {lab.prefix} =====")
    for name in lab.nodes:
        print(f"----- {name} (running={lab.running(name)}) -----")
        print("\n".join(line for line in lab.log(name).splitlines()
                        if "pyroute2" not in line)[-4000:])


@pytest.fixture(scope="session", autouse=True)
def _sweep_dead_runs():
    """Remove namespaces left by earlier test runs whose process is gone."""
    if os.geteuid() != 0 or not labnet.NETNS_DIR.exists():
        yield
        return
    labnet.sweep_dead_runs("l2t")
    yield


@pytest.fixture(scope="module")
def cfg_lab():
    """A built lab (hub and site-a) with no daemon running, for tests that start
    misconfigured ones themselves; one per test module."""
    lab = labnet.Lab(spokes=["site-a"])
    try:
        lab.build()
        yield lab
    finally:
        lab.close()


@pytest.fixture
def make_lab(request):
    """Factory for fresh labs: make_lab(spokes=[...], start=True, **Lab kwargs)."""
    labs = []

    def make(spokes=("site-a", "site-b"), start=True, **kw):
        lab = labnet.Lab(spokes=spokes, **kw)
        labs.append(lab)
        lab.build()
        if start:
            lab.start_all()
            lab.wait_sessions()
        return lab

    yield make
    for lab in labs:
        if _failed(request):
            _dump_logs(lab, f"{request.node.name} failed")
        lab.close()


@pytest.fixture(scope="session", params=list(OFFLOAD_MODES))
def _shared_lab(request):
    lab = labnet.Lab(spokes=SHARED_SPOKES, lan=SHARED_LAN,
                     offload=OFFLOAD_MODES[request.param])
    lab.mode = request.param
    try:
        lab.build()
        lab.start_all()
        lab.wait_sessions()
        yield lab
    finally:
        lab.close()


@pytest.fixture
def lab(_shared_lab, request):
    """The shared lab, checked healthy before each test (its logs dumped on failure)."""
    for name in _shared_lab.nodes:
        if not _shared_lab.running(name):
            pytest.fail(f"shared lab: {name} is not running (exit "
                        f"{_shared_lab.nodes[name].proc.returncode}); log tail:\n"
                        f"{_shared_lab.log_tail(name)}")
    yield _shared_lab
    if _failed(request):
        _dump_logs(_shared_lab, f"{request.node.name} failed")
