"""Programs in real Docker containers (images built here, no registry): found on the
container's own C library, with the container's name and id from ig's enrichment,
and `watch --container NAME` selects one container in the kernel."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from helpers import IMAGE, REPO, compile_program, program_facts, run_cli, start_watch

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


def start_container(image: str, binary: Path, *args: str) -> str:
    """A container running the program (bind-mounted read-only) until removed; its name."""
    name = f"igdl-{uuid.uuid4().hex[:10]}"
    subprocess.run(["docker", "run", "-d", "--name", name, "-v", f"{binary}:/program:ro", image, "/program", *args],
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


def container_pid(name: str) -> int:
    return int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", name], check=True,
                              capture_output=True, text=True).stdout)


def namespace_tids(pid: int) -> dict:
    """Host thread id -> its id in the container's pid namespace."""
    tids = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("NSpid:"):
                tids[int(task.name)] = int(line.split()[-1])
    return tids


@pytest.mark.parametrize("libc", sorted(IMAGES))
def test_containers_of_one_image_in_their_own_pid_namespaces(container_daemon, libc, tmp_path):
    """Containers of one image share one C library file (under an overlay device
    each): it is probed once, so nothing fires twice (no false relock-held), and
    lock owners, which the C library records as the container numbers threads,
    are named by host thread id: an unlock of another thread's lock names that
    thread, and a deadlock in the container is found with its owners."""
    image, compiler = IMAGES[libc]
    churn, misuse = compile_program("churn", compiler=compiler), compile_program("misuse", compiler=compiler)
    deadlock = compile_program("deadlock", compiler=compiler)
    out = tmp_path / "report.json"
    # musl's unlocks are always probed; glibc's on request
    watch, lines = start_watch(container_daemon, out, *([] if libc == "musl" else ["--unlock-checks"]))
    started = []
    try:
        started.append(start_container(image, churn))
        churn_pid = container_pid(started[-1])
        # a finding from it: its (the image's) C library is probed
        lines.wait_for(lambda line: f"(pid={churn_pid}," in line)
        # musl records the owner of error-checking and recursive mutexes only
        started.append(start_container(image, misuse, "unlock-other", *(["errorcheck"] if libc == "musl" else [])))
        subprocess.run(["docker", "wait", started[-1]], check=True, capture_output=True)
        logs = subprocess.run(["docker", "logs", started[-1]], check=True, capture_output=True, text=True).stdout
        misused_lock = hex(program_facts(logs)["L"][0])
        lines.wait_for(lambda line: f"unlocks mutex M0 ({misused_lock})" in line)
        started.append(start_container(image, deadlock, "abba"))
        deadlocked = container_pid(started[-1])
        lines.wait_for(lambda line: "blocked in a lock cycle" in line and f"(pid={deadlocked}," in line)
        in_namespace = namespace_tids(deadlocked)
        watch.send_signal(signal.SIGINT)
        watch.wait(120)
    finally:
        if watch.poll() is None:
            watch.kill()
        for name in started:
            remove_container(name)
    assert watch.returncode == 0
    findings = json.loads(out.read_text())["findings"]
    # (IG here learns of a container by polling the runtime: a container whose
    # records all came in its first second is not named; pids and addresses tell
    # ours apart from anything else running on the host)
    ours = [f for f in findings if f["pid"] in (churn_pid, deadlocked) or misused_lock in f["mutexes"]]
    assert sorted(f["kind"] for f in ours) == [
        "actual-deadlock", "potential-deadlock", "potential-deadlock", "unlock-not-owner"], ours
    assert {f["pid"] for f in ours if f["kind"] == "potential-deadlock"} == {churn_pid, deadlocked}
    (misused,) = [f for f in ours if f["kind"] == "unlock-not-owner"]
    assert len(set(misused["threads"])) == 2  # the unlocking thread, then the owner: both known
    (hang,) = [f for f in findings if f["kind"] == "actual-deadlock" and f["pid"] == deadlocked]
    # host thread ids, not the container's own numbers, and each held by the other
    assert set(hang["threads"]) == set(in_namespace) - {deadlocked}
    assert all(tid != in_namespace[tid] for tid in hang["threads"])
    assert {b["held_by"] for b in hang["blocked"]} == set(hang["threads"])


def test_stacks_of_a_removed_container_are_symbolized(container_daemon, tmp_path):
    """A program in a container misuses a lock and exits at once, and the container
    is removed before the report: the finding's stacks are still symbolized (its
    files were opened while the session ran, and kept)."""
    image, _ = IMAGES["glibc"]
    churn, misuse = compile_program("churn"), compile_program("misuse")
    report = tmp_path / "report.json"
    watch, lines = start_watch(container_daemon, report, "--unlock-checks")
    started = []
    try:
        # the program is gone before its library could be probed: a first container
        # of the image gets the image's C library probed (a finding from it says so)
        started.append(start_container(image, churn))
        churn_pid = container_pid(started[-1])
        lines.wait_for(lambda line: f"(pid={churn_pid}," in line)
        started.append(start_container(image, misuse, "unlock-other"))
        subprocess.run(["docker", "wait", started[-1]], check=True, capture_output=True)
        logs = subprocess.run(["docker", "logs", started[-1]], check=True, capture_output=True, text=True).stdout
        (mutex,) = program_facts(logs)["L"]
        lines.wait_for(lambda line: " unlocks " in line and f"({mutex:#x})" in line)
        remove_container(started.pop())
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=120) == 0, lines.text()
    finally:
        watch.kill()
        for name in started:
            remove_container(name)
    result = json.loads(report.read_text())
    (misused,) = [f for f in result["findings"]
                  if f["kind"] == "unlock-not-owner" and f["mutexes"] == [f"{mutex:#x}"]]
    frames = [frame for edge in misused["edges"] for stack in (edge["from_stack"], edge["to_stack"])
              for frame in stack or []]
    ours = [frame for frame in frames if frame["file"] == "/program"]
    if not ours:  # say what came instead, in full
        pytest.fail(json.dumps({"edges": misused["edges"], "lost": result["stats"]["events_lost"]}))
    # neither the container nor its process is there to open /program through
    assert any(frame["function"] == "main" and (frame["source_file"] or "").endswith("misuse.c")
               for frame in ours), ours
