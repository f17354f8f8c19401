"""The committed locks match pyproject.toml: refreshed after every change to its dependencies, pinning all of them.

`scripts/lock.sh` writes requirements/dev.txt (the `dev` extra) and requirements/runtime.txt (`model`, `serve`
and `runtimes`) with the digest of pyproject.toml's declarations on their first line; torch is installed first
from requirements/torch.txt and is in neither lock.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCKS = {"dev.txt": ("dev",), "runtime.txt": ("model", "serve", "runtimes")}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$", re.MULTILINE)


def lock_digest() -> object:
    spec = importlib.util.spec_from_file_location("lock_digest", ROOT / "scripts" / "lock_digest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def declared(extras: tuple[str, ...]) -> list[Requirement]:
    """The project's own requirements plus those of `extras`, following `masenet[...]` self-references."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if requirement.name == project["name"]:
                pending.extend(requirement.extras)
            else:
                requirements.append(requirement)
    return requirements


def pins(lock: Path) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PIN.findall(lock.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_lock_was_refreshed_after_the_last_dependency_change(name: str) -> None:
    module = lock_digest()
    first_line = (ROOT / "requirements" / name).read_text(encoding="utf-8").splitlines()[0]
    expected = module.PREFIX + module.digest(PYPROJECT)
    assert first_line == expected, f"requirements/{name} is stale: run `bash scripts/lock.sh` and commit the locks"


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_lock_pins_every_declared_requirement_within_its_range(name: str) -> None:
    locked = pins(ROOT / "requirements" / name)
    for requirement in declared(LOCKS[name]):
        if requirement.name == "torch":
            assert "torch" not in locked, "torch is installed from requirements/torch.txt, not from a lock"
            continue
        version = locked.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is declared but not locked in requirements/{name}"
        assert requirement.specifier.contains(version, prereleases=True), f"{requirement} locked at {version}"


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_locked_package_has_hashes_and_none_is_a_cuda_build(name: str) -> None:
    text = (ROOT / "requirements" / name).read_text(encoding="utf-8")
    entries = re.findall(r"^([A-Za-z0-9][^\s=]*)==\S+((?: \\\n\s+--hash=sha256:[0-9a-f]{64})+)", text, re.MULTILINE)
    assert len(entries) == len(pins(ROOT / "requirements" / name)) > 20
    assert not [package for package, _ in entries if re.match(r"(nvidia-|triton|cuda-)", package)]


def test_torch_pin_is_inside_the_project_range() -> None:
    (line,) = [line for line in (ROOT / "requirements" / "torch.txt").read_text().splitlines() if line[:1].isalpha()]
    pinned = Requirement(line)
    (declared_torch,) = [requirement for requirement in declared(("model",)) if requirement.name == "torch"]
    (version,) = [spec.version for spec in pinned.specifier if spec.operator == "=="]
    assert declared_torch.specifier.contains(version), f"torch {version} is outside {declared_torch.specifier}"
