"""netns-lab/bootstrap.py without network or root: the stamp, what is (re)installed, and
the one-line errors. pip, venv and apt are replaced by recorders; tests/netns/
test_bootstrap.py runs the real ones."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "netns-lab" / "bootstrap.py"


@pytest.fixture
def boot(tmp_path, monkeypatch):
    """A fresh bootstrap module pointed at a scratch checkout whose pip and venv record."""
    spec = importlib.util.spec_from_file_location("bootstrap_under_test", SRC)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    repo = tmp_path / "checkout"
    repo.mkdir()
    (repo / "setup.cfg").write_text("[metadata]\nname = l2vpn\n")
    (repo / "pyproject.toml").write_text("[build-system]\n")
    monkeypatch.setattr(mod, "REPO", repo)
    monkeypatch.setattr(mod, "VENV", repo / ".venv")
    monkeypatch.setattr(mod, "PYTHON", repo / ".venv" / "bin" / "python")
    monkeypatch.setattr(mod, "STAMP", repo / ".venv" / "l2vpn-installed.json")
    mod.calls = []
    mod.pip_rc = 0

    def run(argv, **_kw):
        mod.calls.append(list(argv))
        if argv[1:3] == ["-m", "venv"]:
            (Path(argv[3]) / "bin").mkdir(parents=True)
            (Path(argv[3]) / "pyvenv.cfg").write_text("home = /usr/bin\n")
            (Path(argv[3]) / "bin" / "python").symlink_to(sys.executable)
            return subprocess.CompletedProcess(argv, 0, "", "")
        if argv[1:4] == ["-m", "pip", "install"]:
            return subprocess.CompletedProcess(argv, mod.pip_rc, "", "")
        raise AssertionError(f"unexpected command {argv}")

    monkeypatch.setattr(mod.subprocess, "run", run)
    return mod


def pip_targets(mod) -> list[str]:
    return [argv[-1] for argv in mod.calls if "pip" in argv]


def venvs_made(mod) -> int:
    return sum(argv[1:3] == ["-m", "venv"] for argv in mod.calls)


def test_first_run_makes_the_venv_and_installs_editable_with_the_extras(boot):
    assert boot.ensure(("bench",), say=lambda m: None) is True
    assert venvs_made(boot) == 1
    assert pip_targets(boot) == [f"{boot.REPO}[bench]"]
    assert any("-e" in argv for argv in boot.calls if "pip" in argv)
    assert json.loads(boot.STAMP.read_text())["extras"] == ["bench"]


def test_a_second_run_installs_nothing(boot):
    boot.ensure(("bench",), say=lambda m: None)
    boot.calls.clear()
    assert boot.ensure(("bench",), say=lambda m: None) is False
    assert boot.ensure((), say=lambda m: None) is False          # fewer extras: covered
    assert boot.calls == []


def test_a_new_extra_installs_the_union_into_the_same_venv(boot):
    boot.ensure(("bench",), say=lambda m: None)
    boot.calls.clear()
    assert boot.ensure(("test",), say=lambda m: None) is True
    assert venvs_made(boot) == 0
    assert pip_targets(boot) == [f"{boot.REPO}[bench,test]"]


def test_a_changed_setup_cfg_installs_again(boot):
    boot.ensure((), say=lambda m: None)
    (boot.REPO / "setup.cfg").write_text("[metadata]\nname = l2vpn\nversion = 2\n")
    boot.calls.clear()
    assert boot.ensure((), say=lambda m: None) is True
    assert pip_targets(boot) == [str(boot.REPO)] and venvs_made(boot) == 0


def test_a_venv_whose_interpreter_is_gone_is_made_again(boot):
    boot.ensure((), say=lambda m: None)
    boot.PYTHON.unlink()
    boot.PYTHON.symlink_to(boot.REPO / "no-such-python")
    boot.calls.clear()
    assert boot.ensure((), say=lambda m: None) is True
    assert venvs_made(boot) == 1


def test_a_venv_made_for_a_checkout_elsewhere_is_made_again(boot):
    boot.ensure(("lab",), say=lambda m: None)
    stamp = json.loads(boot.STAMP.read_text())
    boot.STAMP.write_text(json.dumps(dict(stamp, repo="/old/place", key="stale")))
    boot.calls.clear()
    boot.ensure((), say=lambda m: None)
    assert venvs_made(boot) == 1
    assert pip_targets(boot) == [str(boot.REPO)]     # the old venv's extras went with it


def test_pip_failing_is_one_line_and_writes_no_stamp(boot):
    boot.pip_rc = 1
    with pytest.raises(boot.Missing, match="pip could not install l2vpn") as exc:
        boot.ensure((), say=lambda m: None)
    assert "\n" not in str(exc.value)
    assert not boot.STAMP.exists()


def test_too_old_a_python_is_refused(boot, monkeypatch):
    monkeypatch.setattr(boot, "MIN_PYTHON", (99, 0))
    with pytest.raises(boot.Missing, match=r"needs Python 99\.0 or later"):
        boot.ensure(())
    assert boot.calls == []


def test_no_python3_venv_and_not_root_says_what_to_install(boot, monkeypatch):
    monkeypatch.setattr(boot.importlib.util, "find_spec",
                        lambda name: None if name == "ensurepip" else object())
    monkeypatch.setattr(boot.os, "geteuid", lambda: 1000)
    with pytest.raises(boot.Missing, match=r"run as root, or `apt-get install -y "
                                           r"python3-venv` first"):
        boot.ensure((), say=lambda m: None)
    assert venvs_made(boot) == 0


def test_missing_tools_without_apt_get_say_so(boot, monkeypatch):
    monkeypatch.setattr(boot.os, "geteuid", lambda: 0)
    monkeypatch.setattr(boot.shutil, "which", lambda cmd: None)
    with pytest.raises(boot.Missing, match="no apt-get here"):
        boot.install_tools({"iperf3": "iperf3"}, say=lambda m: None)


def test_nothing_missing_runs_no_apt(boot, monkeypatch):
    monkeypatch.setattr(boot.shutil, "which", lambda cmd: f"/usr/bin/{cmd}")
    boot.install_tools({"ip": "iproute2", "ping": "iputils-ping"}, say=lambda m: None)
    assert boot.calls == []


def test_enter_or_exit_turns_a_missing_prerequisite_into_one_line_and_exit_2(
        boot, monkeypatch, capsys):
    monkeypatch.setattr(boot, "MIN_PYTHON", (99, 0))
    with pytest.raises(boot.Missing):
        boot.enter()                                   # for callers with their own errors
    with pytest.raises(SystemExit) as exc:
        boot.enter_or_exit()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot run: l2vpn needs Python 99.0" in err


def test_enter_reexecutes_on_the_venvs_python(boot, monkeypatch):
    seen = {}
    monkeypatch.setattr(boot.os, "execve",
                        lambda path, argv, env: seen.update(path=path, argv=argv, env=env))
    monkeypatch.setattr(sys, "argv", ["netns-lab/lab", "--keep"])
    boot.enter((), say=lambda m: None)
    assert seen["path"] == boot.PYTHON
    assert seen["argv"][0] == str(boot.PYTHON) and seen["argv"][2:] == ["--keep"]
    assert Path(seen["argv"][1]).is_absolute()
    assert seen["env"]["PATH"].startswith(str(boot.VENV / "bin"))


def test_a_venv_python_that_cannot_start_is_one_line(boot, monkeypatch):
    def refuse(*_a):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(boot.os, "execve", refuse)
    with pytest.raises(boot.Missing, match="cannot start .*: Permission denied"):
        boot.enter((), say=lambda m: None)


def test_enter_inside_the_venv_with_nothing_to_install_returns(boot, monkeypatch):
    boot.ensure((), say=lambda m: None)
    monkeypatch.setattr(boot, "in_venv", lambda: True)
    monkeypatch.setattr(boot.os, "execve", lambda *a: pytest.fail("re-executed"))
    boot.enter(())


def test_the_command_line_not_root_names_missing_tools_and_goes_on(boot, monkeypatch, capsys):
    monkeypatch.setattr(boot.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(boot.shutil, "which", lambda cmd: None if cmd == "iperf3" else cmd)
    assert boot.main(["test", "--tools", "ip:iproute2,iperf3:iperf3"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(boot.PYTHON)
    assert "not root: not installing iperf3" in err
    assert pip_targets(boot) == [f"{boot.REPO}[test]"]


def test_the_command_line_as_root_installs_missing_tools(boot, monkeypatch, capsys):
    monkeypatch.setattr(boot.os, "geteuid", lambda: 0)
    monkeypatch.setattr(boot.shutil, "which", lambda cmd: None)     # and no apt-get
    assert boot.main(["--tools", "iperf3:iperf3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot run: missing iperf3 and no apt-get" in err
    assert boot.calls == []
