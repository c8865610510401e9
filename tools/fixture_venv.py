"""fixture_venv.py - the Python environment of the developer tools in tools/: .venv-tools with the
pinned versions of tools/requirements-fixtures.txt (torch, transformers, safetensors, ...).
A tool calls ensure_venv(__file__) before importing any of them: outside the environment it
creates it if needed (python3 -m venv + pip install from PyPI, the only network use) and
re-executes the tool inside it."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-tools")
REQS = os.path.join(ROOT, "tools", "requirements-fixtures.txt")


def pinned():
    pins = {}
    with open(REQS) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, ver = line.split("==")
                pins[name.strip()] = ver.strip()
    return pins


def ensure_venv(script):
    """Re-executes `script` with the .venv-tools interpreter (creating it if needed)."""
    venv_python = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(venv_python):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    pins = pinned()
    probe = ("import importlib.metadata as m, sys; pins = %r; "
             "sys.exit(0 if all(m.version(k) == v for k, v in pins.items()) else 1)" % pins)
    if subprocess.call([venv_python, "-c", probe], stderr=subprocess.DEVNULL) != 0:
        subprocess.check_call([venv_python, "-m", "pip", "install", "-q", "-r", REQS])
    os.execv(venv_python, [venv_python, os.path.abspath(script)] + sys.argv[1:])
