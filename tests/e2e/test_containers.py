"""Programs in real Docker containers (images built here, no registry): found on the
container's own C library, with the container's name and id from ig's enrichment,
and `watch --container NAME` selects one container in the kernel."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from helpers import IMAGE, REPO, compile_program, run_cli

IMAGES = {"glibc": ("igdeadlock-test/glibc:latest", "gcc"), "musl": ("igdeadlock-test/musl:latest", "musl-gcc")}


@pytest.fixture(scope="module")
def docker() -> None:
    """A Docker engine and the test images, made by the project's own scripts."""
    for script in ("docker.sh", "build-images.sh"):
        command = [str(REPO / "tools" / "containers" / script)] + (["start"] if script == "docker.sh" else [])
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def container_daemon(docker, tmp_path_factory) -> Iterator[str]:
    """An ig daemon started after Docker: it finds containers through the runtime."""
    from igdeadlock.ig.daemon import PrivateDaemon, find_ig

    log = tmp_path_factory.mktemp("ig-containers") / "daemon.log"
    daemon = PrivateDaemon(find_ig(), log_path=str(log))
    address = daemon.start()
    yield str(address)
    daemon.stop()


def start_container(image: str, binary: Path) -> str:
    """A container running the program (bind-mounted read-only) until removed; its name."""
    name = f"igdl-{uuid.uuid4().hex[:10]}"
    subprocess.run(["docker", "run", "-d", "--name", name, "-v", f"{binary}:/program:ro", image, "/program"],
                   check=True, capture_output=True)
    return name


def container_id(name: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.Id}}", name], check=True, capture_output=True,
                          text=True).stdout.strip()


def remove_container(name: str) -> None:
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)


@pytest.mark.parametrize("libc", sorted(IMAGES))
def test_watch_finds_an_inversion_in_a_container_and_only_there(container_daemon, libc):
    image, compiler = IMAGES[libc]
    # churn: a fresh pair of threads takes A then B and B then A every 100 ms, until stopped
    binary = compile_program("churn", compiler=compiler)
    selected = start_container(image, binary)
    bystander = start_container(image, binary)
    try:
        result = run_cli(["watch", "--remote", container_daemon, "--image", IMAGE, "--container", selected,
                          "--duration", "6", "--format", "json"], timeout=180)
        selected_id, bystander_id = container_id(selected), container_id(bystander)
    finally:
        remove_container(selected)
        remove_container(bystander)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    findings = [f for f in report["findings"] if f["suppressed"] is None]
    assert findings, report
    assert {f["kind"] for f in findings} == {"potential-deadlock"}
    # each finding names the selected container, by name and by id; none the other one
    assert {(f["container"], f["container_id"]) for f in findings} == {(selected, selected_id)}, findings
    assert all(bystander_id != f["container_id"] for f in findings)
    # the container's process was traced on the container's own C library
    traced = [p for p in report["processes"] if p["comm"].startswith("program")]
    assert traced and all(p["traced"] and p["flavor"] == libc for p in traced), report["processes"]
    assert all(p["library"] != "/usr/lib/x86_64-linux-gnu/libc.so.6" or libc == "glibc" for p in traced)
