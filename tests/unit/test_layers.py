"""The layering in STYLE.md, checked: fresh-interpreter imports and import direction by `ast`."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "l2vpn"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))

PURE = ("frame", "wire", "switch", "offload", "errors", "guard", "loopguard", "storm", "hosts",
        "pcapng", "lifecycle", "port", "vlan")
PURE_MAY_IMPORT = {"frame", "errors", "guard", "storm", "vlan"}
FORBIDDEN_IN_PURE = {"socket", "ssl", "fcntl", "threading", "time", "selectors", "pyroute2",
                     "scapy", "os", "asyncio", "subprocess", "signal"}
LOW = ("frame", "errors", "wire", "switch", "offload", "config")
HIGH = {"tap", "transport", "hub", "spoke", "node", "management", "metrics", "cli", "eventloop"}


def imports_of(source: str) -> set[str]:
    """Every module a source imports, anywhere in it (functions included), as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"relative import of {node.module!r}: use l2vpn.X")
            found.add(node.module)
            if node.module == "l2vpn":             # from l2vpn import wire, pki
                found.update(f"l2vpn.{alias.name}" for alias in node.names)
    return found


def module_imports(name: str) -> set[str]:
    return imports_of((PACKAGE / f"{name}.py").read_text())


def top_levels(names) -> set[str]:
    return {n.split(".")[0] for n in names}


def ours(names) -> set[str]:
    return {n.split(".")[1] for n in names if n.startswith("l2vpn.")}


def test_the_module_list_is_complete():
    assert {"frame", "wire", "switch", "errors", "config", "pki", "tap", "transport", "eventloop",
            "logs", "management", "node", "hub", "spoke", "cli"} <= set(MODULES)


def test_imports_of_sees_nested_and_from_imports():
    got = imports_of("import os.path\nfrom l2vpn import wire, pki\n"
                     "def f():\n    from l2vpn.hub import Hub\n")
    assert got == {"os.path", "l2vpn", "l2vpn.wire", "l2vpn.pki", "l2vpn.hub"}


# -- (a) every module imports on its own ---------------------------------------------


@pytest.fixture(scope="module")
def fresh_imports():
    """Import each module in its own interpreter, all at once; returns name -> (rc, stderr)."""
    procs = {
        name: subprocess.Popen([sys.executable, "-c", f"import l2vpn.{name}"],
                               cwd=PACKAGE.parent, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for name in MODULES
    }
    results = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=60)
        results[name] = (proc.returncode, err)
    return results


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_in_a_fresh_interpreter(name, fresh_imports):
    rc, err = fresh_imports[name]
    assert rc == 0, err


# -- (b) the pure core has no I/O ----------------------------------------------------


@pytest.mark.parametrize("name", PURE)
def test_pure_core_imports_no_io(name):
    names = module_imports(name)
    assert not top_levels(names) & FORBIDDEN_IN_PURE
    assert ours(names) <= PURE_MAY_IMPORT


# -- (c) dependencies point one way --------------------------------------------------


@pytest.mark.parametrize("name", LOW)
def test_low_layers_never_import_high_ones(name):
    assert not ours(module_imports(name)) & HIGH


@pytest.mark.parametrize("name", MODULES)
def test_only_cli_imports_hub_and_spoke(name):
    if name == "cli":
        assert {"hub", "spoke"} <= ours(module_imports(name))
    else:
        assert not ours(module_imports(name)) & {"hub", "spoke"}


def test_main_only_calls_the_cli():
    assert ours(imports_of((PACKAGE / "__main__.py").read_text())) == {"cli"}
