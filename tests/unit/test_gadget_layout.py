"""The gadget's source is laid out by concern: program.bpf.c holds the
datasources and the probes, each header of bpf/ owns its maps, and no header
reaches into another's maps but through its functions."""

from __future__ import annotations

import re
import subprocess
from typing import Dict, List

from helpers import GADGET_ENTRY, GADGET_HEADERS, REPO

MAP_DEFINITION = re.compile(r'^\} (\w+) SEC\("\.maps"\)|^GADGET_TRACER_MAP\((\w+),', re.M)


def code_only(text: str) -> str:
    """The text without its comments: a map named in a comment is not used."""
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def maps_defined(text: str) -> List[str]:
    return [a or b for a, b in MAP_DEFINITION.findall(text)]


def owners() -> Dict[str, str]:
    return {name: header.name for header in GADGET_HEADERS for name in maps_defined(header.read_text())}


def test_the_entry_file_includes_every_header_and_defines_no_map():
    entry = GADGET_ENTRY.read_text()
    included = set(re.findall(r'^#include "bpf/(\w+\.h)"', entry, re.M))
    assert included == {header.name for header in GADGET_HEADERS}
    assert maps_defined(entry) == []
    # the table of contents names every header
    for header in GADGET_HEADERS:
        assert f"bpf/{header.name}" in entry.split("*/", 2)[1], header.name


def test_each_header_says_what_it_owns_and_is_guarded():
    for header in GADGET_HEADERS:
        text = header.read_text()
        opening = text.split("*/", 2)[1]  # the comment after the licence lines
        assert "Owns" in opening, f"{header.name} does not say what it owns"
        guard = f"IGDEADLOCK_{header.stem.upper()}_H"
        assert f"#ifndef {guard}\n#define {guard}\n" in text, header.name
        for name in maps_defined(text):
            assert name in opening, f"{header.name} owns {name} but does not say so"


def test_no_header_touches_another_headers_maps():
    """A map is read and written by the functions of the header that defines it."""
    owner = owners()
    assert len(owner) == sum(len(maps_defined(h.read_text())) for h in GADGET_HEADERS), "a map defined twice"
    trespass = []
    for header in GADGET_HEADERS:
        code = code_only(header.read_text())
        for name, home in owner.items():
            if home != header.name and re.search(r"&%s\b" % name, code):
                trespass.append(f"{header.name} uses {name} of {home}")
    assert trespass == []


def test_the_check_sees_a_trespass():
    """The check above can fail: a use of another header's map is found, a
    mention in a comment is not."""
    owner = owners()
    name, home = next(iter(owner.items()))
    stranger = next(h.name for h in GADGET_HEADERS if h.name != home)
    code = code_only(f"/* &{name} */ x = bpf_map_lookup_elem(&{name}, &key);")
    assert re.search(r"&%s\b" % name, code) and stranger != home
    assert not re.search(r"&%s\b" % name, code_only(f"/* only &{name} in a comment */"))


MAX_LINES = 1500  # a file longer than this is split by concern
GENERATED = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "go.sum")


def test_no_hand_written_file_is_longer_than_the_limit():
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    sources = [REPO / name for name in listed if not name.endswith(GENERATED)]
    assert len(sources) > 100  # the whole tree was looked at
    long = {}
    for path in sources:
        if path.is_file():
            try:
                lines = path.read_text().count("\n")
            except UnicodeDecodeError:
                continue  # not text
            if lines > MAX_LINES:
                long[str(path.relative_to(REPO))] = lines
    assert long == {}
