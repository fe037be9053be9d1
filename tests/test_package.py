"""The package as an operator installs it: a wheel built from this checkout, installed
into a fresh virtual environment, run from a directory that holds nothing of ours.

Nothing is downloaded: the wheel is built without build isolation (setuptools comes
with the test extra) and its dependencies are the running interpreter's own, reached
through a ``.pth`` file in the new environment.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import time
import venv
from pathlib import Path

import httpx
import pytest

from coverservice import __version__
from coverservice.process import free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ directory of a fresh venv holding the wheel and nothing else of ours."""
    base = tmp_path_factory.mktemp("package")
    source = base / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("coverservice", "migrations"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = base / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(wheels), str(source)],
        check=True, capture_output=True,
    )
    (wheel,) = wheels.glob("coverservice-*.whl")
    env = base / "venv"
    venv.create(env, with_pip=False)
    (purelib,) = (env / "lib").glob("python3*/site-packages")
    (purelib / "_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "-q", "--no-deps",
         "--no-index", str(wheel)],
        check=True, capture_output=True,
    )
    return env / "bin"


def _env(directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVERSERVICE_", "PYTHON"))}
    env["PWD"] = str(directory)
    return env


def _run(bin_dir: Path, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / "coverservice"), *args], cwd=cwd, env=_env(cwd),
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_the_installed_package_is_the_wheel(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run([str(installed / "python"), "-c", "import coverservice; print(coverservice.__file__)"],
                           cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(installed.parent)), where.stdout
    version = _run(installed, "--version", cwd=tmp_path)
    assert version.stdout.strip() == f"coverservice {__version__}"


def test_migrate_and_serve_from_an_empty_directory(installed: Path, tmp_path: Path) -> None:
    migrate = _run(installed, "migrate", cwd=tmp_path)
    assert migrate.returncode == 0, migrate.stderr
    assert (tmp_path / "coverservice.sqlite3").exists()

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(installed / "coverservice"), "serve", "--port", str(port)], cwd=tmp_path,
                                env=_env(tmp_path), stdout=out, stderr=subprocess.STDOUT)
    try:
        ready = None
        for _ in range(300):
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
        assert ready is not None and ready.status_code == 200, log.read_text()
        assert ready.json() == {"status": "ok", "database": "ok", "storage": "ok"}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert (tmp_path / "coverservice-data").is_dir()


def test_demo_from_an_empty_directory(installed: Path, tmp_path: Path) -> None:
    demo = _run(installed, "demo", "--rooms", "1", "--frames", "3", "--interval", "0", "--dir", str(tmp_path / "demo"),
                cwd=tmp_path, timeout=120)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (tmp_path / "demo" / "contact-sheet.html").exists()
