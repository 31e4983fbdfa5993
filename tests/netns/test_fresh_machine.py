"""The README's scripts on a machine that lacks something: one line and exit 2, never a
traceback; and the checkout's venv made for real under a Python that refuses pip (PEP 668).

.ci/fresh-debian runs the README's commands on a whole fresh Debian 12 root; these tests
cover the failures that root does not have (no root, no /dev/net/tun)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB_DIR = REPO / "netns-lab"
TOOLS = ["lab", "bench", "stormbench", "loadgen"]
NOBODY = 65534


def run_tool(argv, timeout_s=60, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, **kw)


def assert_one_line_refusal(done, tool: str, expected: str) -> None:
    out = done.stdout + done.stderr
    assert done.returncode == 2, (done.returncode, out)
    assert "Traceback" not in out, out
    lines = [line for line in done.stderr.splitlines() if expected in line]
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: "), done.stderr


@pytest.mark.parametrize("tool", TOOLS)
def test_not_root_is_one_line(tool):
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    # As a new user would: the script on the system's python3, from a folder anyone may
    # read (the checkout under test, and pytest's tmp_path, may be root's alone).
    with tempfile.TemporaryDirectory(prefix="l2vpn-notroot-") as top:
        folder = Path(top) / "netns-lab"
        folder.mkdir()
        for name in (tool, "bootstrap.py", "benchkit.py"):
            shutil.copy(LAB_DIR / name, folder / name)
        for path in (Path(top), folder, *folder.iterdir()):
            path.chmod(0o755)
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        done = run_tool(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                         "--clear-groups", "--", python, str(folder / tool)], cwd="/")
    assert_one_line_refusal(done, tool, "run as root")


@pytest.mark.parametrize("tool", ["lab", "bench"])
def test_no_dev_net_tun_is_one_line(tool):
    # A private mount namespace where /dev/net is an empty tmpfs: the machine's stays as is.
    script = 'mount -t tmpfs none /dev/net && exec "$@"'
    done = run_tool(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                     script, "sh", sys.executable, str(LAB_DIR / tool)])
    assert_one_line_refusal(done, tool, "/dev/net/tun is missing (modprobe tun)")


def _externally_managed_python() -> str | None:
    """An interpreter here that refuses pip installs (PEP 668), e.g. Debian's own."""
    for cand in ("/usr/bin/python3", shutil.which("python3")):
        if not cand or not os.path.exists(cand):
            continue
        stdlib = run_tool([cand, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"])
        version = run_tool([cand, "-c", "import sys; print(sys.version_info >= (3, 11))"])
        if (stdlib.returncode == 0 and version.stdout.strip() == "True"
                and (Path(stdlib.stdout.strip()) / "EXTERNALLY-MANAGED").exists()):
            return cand
    return None


def test_the_venv_is_made_once_under_a_python_that_refuses_pip(tmp_path):
    python = _externally_managed_python()
    if python is None:
        pytest.skip("no Python >= 3.11 with PEP 668's EXTERNALLY-MANAGED marker here "
                    f"({sysconfig.get_path('stdlib')} has none)")
    refused = run_tool([python, "-m", "pip", "install", "--dry-run", "--no-index", "six"])
    assert "externally-managed-environment" in refused.stdout + refused.stderr
    checkout = tmp_path / "checkout"
    (checkout / "netns-lab").mkdir(parents=True)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, checkout / name)
    shutil.copytree(REPO / "l2vpn", checkout / "l2vpn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(LAB_DIR / "bootstrap.py", checkout / "netns-lab" / "bootstrap.py")
    boot = [python, str(checkout / "netns-lab" / "bootstrap.py")]

    first = run_tool(boot, timeout_s=300)
    assert first.returncode == 0, first.stderr
    venv_python = checkout / ".venv" / "bin" / "python"
    assert first.stdout.strip() == str(venv_python)
    assert "creating .venv/" in first.stderr and "installing l2vpn" in first.stderr
    where = run_tool([str(venv_python), "-c",
                      "import l2vpn.cli, yaml, pyroute2, cryptography; print(l2vpn.__file__)"],
                     cwd="/")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(checkout / "l2vpn")   # editable

    again = run_tool(boot)
    assert again.returncode == 0 and again.stdout == first.stdout
    assert again.stderr == "", again.stderr                 # nothing made, nothing installed
