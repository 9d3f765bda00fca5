"""The releases a bisection can try: read from the package index (PyPI's JSON API), pre-releases
and yanked releases left out unless asked for, and the ones that cannot run here told apart
before anything is installed (no CPU kernels, no file for this platform or Python)."""
from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass

from omegaconf import OmegaConf
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import sys_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from .. import envs
from ..errors import ConfigError

INDEX = "https://pypi.org/pypi/{package}/json"
# The packages a bisection can move, and the override that sets each one's version for a job.
PACKAGES = {"bitsandbytes": "bnb.version", "peft": "++bnb.companions.peft",
            "transformers": "++bnb.companions.transformers", "accelerate": "++bnb.companions.accelerate"}


class BisectError(ValueError):
    """Input a bisection cannot start from: one sentence that names the problem and the fix."""


@dataclass
class Release:
    version: str
    yanked: bool
    files: list  # the index's file entries (filename, packagetype, requires_python)

    @property
    def pre(self) -> bool:
        return Version(self.version).is_prerelease or Version(self.version).is_devrelease


def fetch(package: str, timeout: float = 30) -> list[Release]:
    """Every release of `package` on the index with at least one file, oldest first."""
    if package not in PACKAGES:
        raise BisectError(f"{package} is not a package dropsweep can bisect; use one of {', '.join(PACKAGES)}.")
    try:
        with urllib.request.urlopen(INDEX.format(package=package), timeout=timeout) as answer:
            data = json.load(answer)
    except urllib.error.HTTPError as error:
        raise BisectError(f"the package index answered {error.code} for {package} ({INDEX.format(package=package)}); "
                          f"check the name, or try again later.") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise BisectError(f"the package index ({INDEX.format(package=package)}) cannot be read ({reason}); "
                          f"check the network, or try again later.") from None
    releases = []
    for version, files in data.get("releases", {}).items():
        try:
            Version(version)
        except InvalidVersion:
            continue
        if files:
            releases.append(Release(version, all(f.get("yanked") for f in files), files))
    return sorted(releases, key=lambda r: Version(r.version))


def between(releases: list[Release], good: str, bad: str, pre: bool = False, yanked: bool = False) -> list[Release]:
    """The releases from `good` to `bad`, both included (the ends are kept even if pre-release or yanked)."""
    lo, hi = Version(good), Version(bad)
    return [r for r in releases if lo <= Version(r.version) <= hi
            and (Version(r.version) in (lo, hi) or ((pre or not r.pre) and (yanked or not r.yanked)))]


def find(releases: list[Release], package: str, version: str, end: str) -> Release:
    """The release named `version`, or one sentence saying it does not exist."""
    try:
        wanted = Version(version)
    except InvalidVersion:
        raise BisectError(f"--{end} {version} is not a version number; give a release such as "
                          f"--{end} {releases[-1].version if releases else '1.0.0'}.") from None
    for release in releases:
        if Version(release.version) == wanted:
            return release
    near = sorted(releases, key=lambda r: abs(_number(r.version) - _number(version)))[:3]
    raise BisectError(f"{package} {version} does not exist on the package index; nearby releases are "
                      f"{', '.join(sorted((r.version for r in near), key=Version))}.")


def _number(version: str) -> float:
    parts = (Version(version).release + (0, 0, 0))[:3]
    return parts[0] * 1e6 + parts[1] * 1e3 + parts[2]


def cannot_run_here(package: str, release: Release, device: str) -> str | None:
    """Why `release` cannot run on this machine, in one sentence, as far as the index tells; None if it may."""
    python = ".".join(map(str, sys.version_info[:3]))
    tags = {str(t) for t in sys_tags()}
    usable = []
    for entry in release.files:
        spec = entry.get("requires_python")
        try:
            if spec and Version(python) not in SpecifierSet(spec):
                continue
        except InvalidSpecifier:
            pass
        name = entry.get("filename", "")
        if entry.get("packagetype") == "bdist_wheel":
            try:
                _, _, _, wheel_tags = parse_wheel_filename(name)
            except InvalidWheelFilename:
                continue
            if not {str(t) for t in wheel_tags} & tags:
                continue
        usable.append(name)
    if not usable:
        return f"{package} {release.version} has no file for Python {python} on this platform."
    if package == "bitsandbytes":
        try:
            envs.check_request(OmegaConf.create({"version": release.version, "companions": {}}), device)
        except ConfigError as refused:
            return str(refused)
    if package == "transformers" and Version(release.version).major < 5:
        return (f"transformers {release.version} is older than dropsweep's training code accepts "
                f"(it needs transformers 5).")
    return None
