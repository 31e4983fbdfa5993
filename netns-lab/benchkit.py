"""What the benchmarks share: running programs in namespaces, waiting, iperf3 and CPU
figures, tool versions. Imported by netns-lab/bench and netns-lab/stormbench (and by
whatever measures next), so no tool loads another's source."""

import contextlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import bootstrap

IPERF_PORT = 5201


def say_as(prog: str):
    """A tool's progress printer: `prog: message` on stderr, flushed."""
    def say(msg: str) -> None:
        print(f"{prog}: {msg}", file=sys.stderr, flush=True)
    return say


class BenchError(RuntimeError):
    """A step of a benchmark failed to run."""


def apt_install(apt_for: dict, say) -> None:
    """Install the Debian package of each missing command ({command: package})."""
    try:
        bootstrap.install_tools(apt_for, say)
    except bootstrap.Missing as exc:
        raise BenchError(str(exc)) from None


def openvpn_version() -> str:
    out = subprocess.run(["openvpn", "--version"], capture_output=True, text=True)
    return (out.stdout.splitlines() or [""])[0].strip()


def iperf3_version() -> str:
    out = subprocess.run(["iperf3", "--version"], capture_output=True, text=True)
    return (out.stdout.splitlines() or [""])[0].strip()


def git_commit(src: Path) -> str:
    out = subprocess.run(["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return "unknown"
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "l2vpn"],
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def host_info(src: Path, **extra) -> dict:
    """What a result needs to be set beside another's: machine, kernel, versions."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"name": platform.node(), "kernel": platform.release(), "cpu_model": model,
            "python": platform.python_version(), "iperf3": iperf3_version(),
            "l2vpn_commit": git_commit(src), **extra}


def cpu_ticks(pid: int) -> int:
    """utime + stime of a whole process (all threads), in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def real_pid(proc: subprocess.Popen, comm: str) -> int:
    """The pid of the program itself: `ip netns exec` execs it, but check, and fall back
    to its child if ip forked."""
    pid = proc.pid
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/comm").read_text().strip() == "ip":
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if kids:
                pid = int(kids[0])
    got = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    if comm not in got:
        raise BenchError(f"pid {pid} is not {comm}: {got!r}")
    return pid


def popen_in(ns: str, argv: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL,
                            start_new_session=True, **kw)


def end_process(proc: subprocess.Popen | None, timeout_s: float = 5) -> None:
    """SIGTERM, then SIGKILL after timeout_s; reaps it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait(pred, timeout_s: float, what: str, check=None, interval_s: float = 0.1):
    """Poll pred() until truthy (returned); check() may raise to fail fast."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check:
            check()
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def listening(lab, name: str, port: int) -> bool:
    out = lab.exec(lab.ns(name), ["ss", "-Hltn", f"sport = :{port}"], timeout_s=10)
    return bool(out.stdout.strip())


def iperf_json(lab, src: str, dst_ip: str, seconds: float, extra: list[str]) -> dict:
    argv = ["iperf3", "-c", dst_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-O", "1",
            "-J", "--connect-timeout", "5000", *extra]
    out = lab.exec(lab.ns(src), argv, timeout_s=seconds + 40)
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"iperf3 from {src} printed no JSON (exit {out.returncode}): "
                         f"{out.stdout[-500:]}{out.stderr[-500:]}") from None
    if out.returncode != 0 or "error" in data:
        raise BenchError(f"iperf3 {' '.join(extra)} from {src} failed: "
                         f"{data.get('error', out.stderr.strip())}")
    return data


def tcp_gbit_s(data: dict) -> float:
    return data["end"]["sum_received"]["bits_per_second"] / 1e9
