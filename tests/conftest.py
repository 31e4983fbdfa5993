"""Test-wide policy: the netns and slow markers, and when such tests skip or fail.

- `slow` tests run only with L2VPN_SLOW=1.
- `netns` tests (everything under tests/netns/ is marked so automatically) need root,
  /dev/net/tun and the `ip` command. Without them they skip with the reason, except when
  the CI environment variable is set: there a missing prerequisite fails the test, so a
  CI run can never pass by silently skipping the real-network suite.
"""

import os
import shutil
from pathlib import Path

import pytest

NETNS_DIR = Path(__file__).parent / "netns"


def pytest_configure(config):
    config.addinivalue_line("markers", "netns: needs root; builds network namespaces, TAPs "
                                       "and real processes")
    config.addinivalue_line("markers", "slow: long soak runs; deselected unless L2VPN_SLOW=1")


def netns_problems() -> list[str]:
    """Why netns tests cannot run here (empty when they can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root")
    if not os.path.exists("/dev/net/tun"):
        problems.append("no /dev/net/tun")
    if shutil.which("ip") is None:
        problems.append("no `ip` command (apt-get install iproute2)")
    return problems


def _in_netns_dir(item) -> bool:
    try:
        Path(item.path).resolve().relative_to(NETNS_DIR.resolve())
        return True
    except ValueError:
        return False


def pytest_collection_modifyitems(config, items):
    slow_ok = os.environ.get("L2VPN_SLOW") == "1"
    problems = netns_problems()
    in_ci = bool(os.environ.get("CI"))
    for item in items:
        if _in_netns_dir(item) and "netns" not in item.keywords:
            item.add_marker(pytest.mark.netns)
        if "slow" in item.keywords and not slow_ok:
            item.add_marker(pytest.mark.skip(reason="slow test: set L2VPN_SLOW=1 to run it"))
        if "netns" in item.keywords and problems and not in_ci:
            item.add_marker(pytest.mark.skip(reason="netns test needs " + "; ".join(problems)))


@pytest.hookimpl(tryfirst=True)      # before skipif markers are evaluated
def pytest_runtest_setup(item):
    if "netns" in item.keywords and os.environ.get("CI"):
        problems = netns_problems()
        if problems:
            pytest.fail("CI is set but this netns test cannot run: " + "; ".join(problems)
                        + " (CI must not skip the real-network suite)", pytrace=False)
