"""Report formats from a real trace: SARIF through Microsoft's validator, HTML in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from helpers import IMAGE, REPO, program_facts, run_cli

SARIF_MULTITOOL = REPO / "build" / "tools" / "node_modules" / "@microsoft" / "sarif-multitool-linux" / "Sarif.Multitool"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def traced(daemon, binary, fmt, out):
    result = run_cli(["trace", "--remote", daemon, "--image", IMAGE, "--format", fmt, "-o", str(out), "--",
                      str(binary)])
    assert result.returncode == 0, result.stderr
    return program_facts(result.stdout)


def validate_sarif(path, tmp_path):
    if not SARIF_MULTITOOL.exists():
        pytest.fail("the SARIF validator is missing: run `make setup`")
    log = tmp_path / (path.stem + ".validation.sarif")
    subprocess.run([str(SARIF_MULTITOOL), "validate", str(path), "-o", str(log), "--log", "ForceOverwrite"],
                   check=True, capture_output=True)
    return [r for r in json.loads(log.read_text())["runs"][0].get("results", []) if r.get("level") == "error"]


def test_sarif_is_valid_2_1_0_with_source_locations(ig_daemon, program, tmp_path):
    out = tmp_path / "report.sarif"
    facts = traced(ig_daemon, program("abba"), "sarif", out)
    assert validate_sarif(out, tmp_path) == []
    document = json.loads(out.read_text())
    assert document["version"] == "2.1.0"
    (result,) = document["runs"][0]["results"]
    assert result["ruleId"] == "potential-deadlock" and result["level"] == "error"
    assert sorted(result["properties"]["mutexes"]) == sorted(hex(facts[n][0]) for n in ("A", "B"))
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"].endswith("/abba.c")
    assert location["region"]["startLine"] > 0
    functions = {loc["logicalLocations"][0]["fullyQualifiedName"]
                 for loc in result["locations"] + result["relatedLocations"]}
    assert functions == {"lock_a_then_b", "lock_b_then_a"}


def test_sarif_validator_rejects_a_broken_document(tmp_path):
    broken = tmp_path / "broken.sarif"
    broken.write_text(json.dumps({"version": "2.1.0", "runs": [{"tool": {"driver": {"name": 1}},
                                                                  "results": [{"bogus": True}]}]}))
    assert validate_sarif(broken, tmp_path) != []


def test_html_report_renders_the_cycle_picture(ig_daemon, program, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: run `make setup`")
    out = tmp_path / "report.html"
    facts = traced(ig_daemon, program("abba"), "html", out)
    page = out.read_text()
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    profile = tmp_path / "profile"
    shot = tmp_path / "report.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1200,1600",
                    f"--screenshot={shot}", out.as_uri()], check=True, capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", out.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    # the browser parsed the picture: one circle per lock, one arrow per edge, the addresses in it
    assert dom.count('<svg class="cycle"') == 1
    picture = dom[dom.index('<svg class="cycle"'):dom.index("</svg>")]
    assert picture.count("<circle") == 2 and picture.count("<path") == 3  # 2 arrows + the marker
    for name in ("A", "B"):
        assert f"{facts[name][0]:x}"[-8:] in picture
