"""Blocks copied on purpose between scripts (seeding, device, run name, W&B init, outputs, entry) must stay
byte-identical. A script marks each with '# >>> copied: NAME' ... '# <<< copied: NAME'."""

import re

import pytest
from conftest import REPO

REQUIRED = ("seeding", "device", "run-name", "wandb-init", "outputs", "entry")
SCRIPTS = sorted(p for p in REPO.glob("*.py"))
MARK = re.compile(r"^# (>>>|<<<) copied: ([\w-]+)\s*$")


def extract_blocks(text: str) -> dict[str, str]:
    """NAME -> block text between its markers; raises ValueError on unbalanced or repeated markers."""
    blocks, open_name, lines = {}, None, []
    for lineno, line in enumerate(text.splitlines(), 1):
        m = MARK.match(line)
        if not m:
            if open_name is not None:
                lines.append(line)
            continue
        kind, name = m.groups()
        if kind == ">>>":
            if open_name is not None:
                raise ValueError(f"line {lineno}: block {name!r} opens inside block {open_name!r}")
            if name in blocks:
                raise ValueError(f"line {lineno}: block {name!r} appears twice")
            open_name, lines = name, []
        else:
            if name != open_name:
                raise ValueError(f"line {lineno}: closes {name!r} but {open_name!r} is open")
            blocks[name], open_name = "\n".join(lines), None
    if open_name is not None:
        raise ValueError(f"block {open_name!r} is never closed")
    return blocks


def test_scripts_exist():
    assert SCRIPTS, "no scripts found at the repository root"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_marks_the_required_blocks(script):
    blocks = extract_blocks(script.read_text())
    missing = [name for name in REQUIRED if name not in blocks]
    assert not missing, f"{script.name} lacks copied blocks {missing}"
    assert all(blocks[name].strip() for name in REQUIRED), f"{script.name} has an empty copied block"


def test_copies_are_identical():
    copies: dict[str, dict[str, str]] = {}
    for script in SCRIPTS:
        for name, body in extract_blocks(script.read_text()).items():
            copies.setdefault(name, {})[script.name] = body
    for name, bodies in copies.items():
        reference_script, reference = next(iter(bodies.items()))
        drifted = [s for s, body in bodies.items() if body != reference]
        assert not drifted, f"copied block {name!r} differs between {reference_script} and {drifted}"


def test_checker_catches_drift_and_bad_markers():
    good = "x = 1\n# >>> copied: seeding\ndef f():\n    pass\n# <<< copied: seeding\n"
    assert extract_blocks(good) == {"seeding": "def f():\n    pass"}
    assert extract_blocks(good) != extract_blocks(good.replace("pass", "return 1"))
    for bad in ("# >>> copied: a\n", "# <<< copied: a\n", "# >>> copied: a\n# >>> copied: b\n",
                good + good):
        with pytest.raises(ValueError):
            extract_blocks(bad)
