"""The checkout's own virtual environment, made once and reused by every script here.

Debian 12 and Ubuntu 23.04+ mark the system Python as externally managed (PEP 668):
pip refuses to install into it, and rightly. So the lab, the bench tools and the test
suite run on `.venv/` inside the checkout: `enter()` creates it (once), installs the
package there in editable form with the extras a tool needs, and re-executes the tool
with the venv's interpreter. A stamp in the venv records what was installed for which
setup.cfg, so a second run starts at once; a changed setup.cfg, a new extra or a venv
whose interpreter has gone makes it install again.

Standard library only: it runs before anything is installed. A prerequisite it cannot
provide ends the run with one line saying what to do (`Missing`), never a traceback.

    python3 netns-lab/bootstrap.py [EXTRA,...] [--tools CMD:PKG,...]
        apt-install the tools' packages, ensure the venv; print its python
"""

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / "l2vpn-installed.json"
MIN_PYTHON = (3, 11)
# What an install depends on: a change to any of these installs again.
INSTALL_INPUTS = ("setup.cfg", "pyproject.toml")


class Missing(RuntimeError):
    """A prerequisite this module cannot provide; the message says what to do."""


def _say(msg: str) -> None:
    print(f"{Path(sys.argv[0]).name}: {msg}", file=sys.stderr, flush=True)


def in_venv() -> bool:
    """True when this interpreter is the checkout's venv."""
    return Path(sys.prefix).resolve() == VENV.resolve()


def _install_key() -> str:
    h = hashlib.sha256(str(REPO).encode())
    for name in INSTALL_INPUTS:
        path = REPO / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b""))
    return h.hexdigest()


def _read_stamp() -> dict:
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _covers(extras: set[str]) -> bool:
    """True when the stamp says `extras` are installed for today's setup.cfg."""
    stamp = _read_stamp()
    return (stamp.get("key") == _install_key() and extras <= set(stamp.get("extras", []))
            and os.path.exists(PYTHON))     # follows the symlink to the base interpreter


def apt_install(packages: list[str], say=_say) -> None:
    """Install Debian packages, or raise Missing saying how to get them."""
    if not packages:
        return
    hint = f"apt-get install -y {' '.join(packages)}"
    if os.geteuid() != 0:
        raise Missing(f"missing {', '.join(packages)}: run as root, or `{hint}` first")
    if shutil.which("apt-get") is None:
        raise Missing(f"missing {', '.join(packages)} and no apt-get here: install them "
                      "with this system's package manager")
    say(f"installing with apt-get: {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL,
                   stderr=sys.stderr, check=False)
    done = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                           *packages], env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    if done.returncode != 0:
        raise Missing(f"apt-get could not install {' '.join(packages)} (see above); "
                      f"try `{hint}` by hand")


def install_tools(tools: dict[str, str], say=_say) -> None:
    """Install the Debian package of each missing command ({command: package})."""
    apt_install(sorted({pkg for cmd, pkg in tools.items() if shutil.which(cmd) is None}), say)
    still = sorted({pkg for cmd, pkg in tools.items() if shutil.which(cmd) is None})
    if still:
        raise Missing(f"apt-get ran but these are still missing: {' '.join(still)}")


def _create_venv(say) -> None:
    if importlib.util.find_spec("ensurepip") is None:    # Debian ships it in python3-venv
        apt_install(["python3-venv"], say)
        importlib.invalidate_caches()
    if VENV.exists():
        shutil.rmtree(VENV)
    base = getattr(sys, "_base_executable", sys.executable)   # not a venv's own python
    say(f"creating {VENV.relative_to(REPO)}/ (once) with {base}")
    done = subprocess.run([base, "-m", "venv", str(VENV)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise Missing(f"could not create {VENV}: {last}")


def ensure(extras=(), say=_say) -> bool:
    """Make the venv hold the package with `extras`; True if this call installed."""
    if sys.version_info < MIN_PYTHON:
        raise Missing(f"l2vpn needs Python {'.'.join(map(str, MIN_PYTHON))} or later; "
                      f"{sys.executable} is {sys.version.split()[0]} (Debian 12 has 3.11)")
    wanted = set(extras)
    if _covers(wanted):
        return False
    try:
        return _install(wanted, say)
    except OSError as exc:            # a checkout or venv this user may not write, say
        raise Missing(f"cannot prepare {VENV}: {exc.strerror or exc}"
                      f"{' (run as root?)' if os.geteuid() else ''}") from None


def _install(wanted: set[str], say) -> bool:
    lock = os.open(REPO, os.O_RDONLY)       # two tools bootstrapping at once take turns
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _covers(wanted):
            return False
        stamp = _read_stamp()
        usable = os.path.exists(PYTHON) and (VENV / "pyvenv.cfg").exists() \
            and stamp.get("repo", str(REPO)) == str(REPO)   # not made for a moved checkout
        if not usable:
            _create_venv(say)
            stamp = {}
        extras_all = sorted(wanted | set(stamp.get("extras", [])))
        spec = f"[{','.join(extras_all)}]" if extras_all else ""
        say(f"installing l2vpn{spec} into {VENV.relative_to(REPO)}/ with pip (once)")
        done = subprocess.run([str(PYTHON), "-m", "pip", "install", "-q",
                               "--disable-pip-version-check", "--root-user-action=ignore",
                               "-e", f"{REPO}{spec}"], stdout=sys.stderr)
        if done.returncode != 0:
            raise Missing(f"pip could not install l2vpn into {VENV} (its error is above; "
                          "it needs to reach PyPI)")
        STAMP.write_text(json.dumps({"key": _install_key(), "repo": str(REPO),
                                     "extras": extras_all}) + "\n")
        return True
    finally:
        os.close(lock)


def enter(extras=(), say=_say) -> None:
    """Run the calling script on the venv's python (re-executing it there if need be)."""
    installed = ensure(extras, say)
    if in_venv() and not installed:
        return
    env = dict(os.environ, VIRTUAL_ENV=str(VENV),
               PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PYTHONHOME", None)
    try:
        os.execve(PYTHON, [str(PYTHON), str(Path(sys.argv[0]).resolve()), *sys.argv[1:]], env)
    except OSError as exc:
        raise Missing(f"cannot start {PYTHON}: {exc.strerror or exc}") from None


def enter_or_exit(extras=(), say=_say) -> None:
    """enter() for a script's top level: a missing prerequisite is one line and exit 2."""
    try:
        enter(extras, say)
    except Missing as exc:
        say(f"cannot run: {exc}")
        sys.exit(2)


def main(argv: list[str]) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="bootstrap.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("extras", nargs="?", default="", help="extras to install, e.g. test,bench")
    ap.add_argument("--tools", default="", metavar="CMD:PKG,...",
                    help="Debian packages to apt-install for missing commands (as root; "
                         "not root: say what is missing and go on)")
    args = ap.parse_args(argv)
    tools = dict(t.split(":", 1) for t in args.tools.split(",") if t)
    try:
        missing = sorted({pkg for cmd, pkg in tools.items() if shutil.which(cmd) is None})
        if missing and os.geteuid() != 0:
            _say(f"not root: not installing {' '.join(missing)} (tests that need them, "
                 "and root, will skip)")
        else:
            install_tools(tools)
        ensure([e for e in args.extras.split(",") if e])
    except Missing as exc:
        _say(f"cannot run: {exc}")
        return 2
    print(PYTHON)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
