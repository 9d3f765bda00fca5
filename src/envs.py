"""Package-version environments: one cached overlay venv per requested set of versions.

One Python process cannot hold two versions of a library, so a job that asks for another
bitsandbytes (`bnb=0.50.2`), or another peft / transformers / accelerate (`bnb.companions`),
than the installed one runs in an overlay: a venv whose site-packages holds only the requested
packages, plus a `.pth` that adds the project venv's site-packages behind it. The overlay's
packages shadow the project's; everything else is shared. An overlay is checked once, when it
is built: each package imports from the overlay at its version, and what it requires (torch,
transformers, ...) is what the project venv has; otherwise it is refused in one sentence.

    python -m src.envs list | clean | ensure 0.50.2 [transformers=4.31.0 ...] | ensure installed peft=0.17.0
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf
from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from .errors import ConfigError
from .rundir.files import installed_version

READY = "dropsweep-env.json"  # written last: an overlay without it was never finished
CPU_SINCE = Version("0.46.0")
CUDA13_SINCE = Version("0.48.0")
RELEASE_LINES = ("0.46.1", "0.47.0", "0.48.2", "0.49.2", "0.50.2")


def default_cache_dir() -> Path:
    return Path(os.environ.get("DROPSWEEP_CACHE", Path.home() / ".cache" / "dropsweep"))


def envs_dir(cache_dir) -> Path:
    return Path(cache_dir).expanduser() / "envs"


def installed_bnb() -> str | None:
    """The version of bitsandbytes in the project environment (metadata only: no import)."""
    return installed_version("bitsandbytes")


def requested(bnb: DictConfig) -> tuple[str, dict[str, str]]:
    """(version, companions) of a `bnb` config; version "installed" means this environment's."""
    version = bnb.version
    if isinstance(version, float):  # YAML/Hydra read bnb.version=0.50 as a number
        raise ConfigError(f"bnb.version={version} was read as a number; quote it as a full release, "
                          f"for example bnb.version='0.50.0'.")
    pins = bnb.get("companions")
    companions = OmegaConf.to_container(pins, resolve=True) if pins is not None else {}
    return str(version), {str(k): str(v) for k, v in companions.items()}


def needs_overlay(bnb: DictConfig) -> bool:
    version, companions = requested(bnb)
    if version == "installed" or version == installed_bnb():
        return bool(differing(companions)) if version == "installed" else bool(companions)
    return True


def differing(companions: dict[str, str]) -> dict[str, str]:
    """The companion pins this environment does not already satisfy (a pin of the installed version needs no overlay)."""
    def same(name: str, pin: str) -> bool:
        try:
            return _installed(name) is not None and Version(_installed(name)) == Version(pin)
        except InvalidVersion:
            return False
    return {name: pin for name, pin in companions.items() if not same(name, pin)}


def env_name(version: str, companions: dict[str, str]) -> str:
    """bnb-0.50.2, bnb-0.41.1+peft-0.4.0, or peft-0.17.0 for an overlay of companions only."""
    pins = "".join(f"+{name}-{pin}" for name, pin in sorted(companions.items()))
    return f"bnb-{version}{pins}" if version != "installed" else pins[1:]


def label(version: str, companions: dict[str, str]) -> str:
    """How a request is named in messages: bnb=0.50.2, or peft=0.17.0 for companions only."""
    pins = [f"{name}={pin}" for name, pin in sorted(companions.items())]
    return ",".join(([f"bnb={version}"] if version != "installed" else []) + pins)


def module_of(package: str) -> str:
    """The module a distribution is imported as (huggingface-hub -> huggingface_hub)."""
    return package.lower().replace("-", "_")


def check_request(bnb: DictConfig, device: str) -> None:
    """Refuses, in one sentence, a bitsandbytes version (or a companion pin) that cannot work on this machine."""
    version, companions = requested(bnb)
    for name, pin in companions.items():
        try:
            Version(pin)
        except InvalidVersion:
            raise ConfigError(f"bnb.companions.{name}={pin} is not a version number; give a release "
                              f"such as bnb.companions.{name}=1.2.0.") from None
    if version == "installed":
        pinned = companions.get("transformers")
        if pinned and Version(pinned).major < 5:
            raise ConfigError(f"transformers={pinned} is older than dropsweep's training code accepts (it needs "
                              f"transformers 5: its Trainer and from_pretrained arguments); pick a 5.x release.")
        return
    try:
        wanted = Version(version)
    except InvalidVersion:
        raise ConfigError(f"bnb.version={version} is not a version number; use one of "
                          f"{', '.join(RELEASE_LINES)} or any release such as bnb.version=0.48.1.") from None
    newest = f"bnb={RELEASE_LINES[0]} or newer"
    if device == "cpu" and wanted < CPU_SINCE:
        raise ConfigError(f"bnb={version} has no CPU kernels (CPU support starts at 0.46); "
                          f"use {newest}, or run on a CUDA GPU.")
    transformers_version = companions.get("transformers") or _installed("transformers")
    if transformers_version and Version(transformers_version).major < 5:
        raise ConfigError(f"bnb={version} pins transformers {transformers_version}, but dropsweep's training code "
                          f"needs transformers 5 (its Trainer and from_pretrained arguments); "
                          f"drop the transformers pin and use {newest}.")
    minimum = _transformers_bnb_minimum() if "transformers" not in companions else None
    if minimum and wanted < Version(minimum):
        raise ConfigError(f"bnb={version} is refused by transformers {transformers_version}, which needs "
                          f"bitsandbytes >= {minimum}; use bnb={minimum} or newer.")
    cuda = _torch_cuda()
    if device == "cuda" and cuda and Version(cuda).major >= 13 and wanted < CUDA13_SINCE:
        raise ConfigError(f"bnb={version} has no binary for CUDA {cuda} (CUDA 13 builds start at 0.48); "
                          f"use bnb=0.48.2 or newer, or a torch built for CUDA 12.")


def _installed(name: str) -> str | None:
    return installed_version(name)


def _transformers_bnb_minimum() -> str | None:
    try:
        from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION
    except ImportError:
        return None
    return BITSANDBYTES_MIN_VERSION


def _torch_cuda() -> str | None:
    import torch

    return torch.version.cuda


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


def ensure(version: str, companions: dict[str, str] | None = None, cache_dir=None, log=print) -> Path:
    """The python of the overlay for `version`, built once and reused (parallel callers build it once)."""
    companions = companions or {}
    root = envs_dir(cache_dir or default_cache_dir())
    target = root / env_name(version, companions)
    if (target / READY).exists():  # the fast path: no lock, no import
        return python_of(target)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / READY).exists():  # another job built it while this one waited
            return python_of(target)
        started = time.perf_counter()
        what = f"bitsandbytes {version}" if version != "installed" else label(version, companions)
        log(f"[dropsweep] building the {what} environment in {target} ...")
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _build(tmp, version, companions)
            found = _verify(tmp, version, companions)
            (tmp / READY).write_text(json.dumps({"bitsandbytes": version if version != "installed" else None,
                                                 "companions": companions,
                                                 "found": found, "base": _base_site(),
                                                 "built_s": round(time.perf_counter() - started, 1)}, indent=2))
            shutil.rmtree(target, ignore_errors=True)  # a leftover without READY
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"[dropsweep] {what} environment ready ({time.perf_counter() - started:.1f} s)")
    return python_of(target)


def _base_site() -> str:
    return sysconfig.get_paths()["purelib"]


def _uv() -> str | None:
    local = Path(sys.prefix) / "bin" / "uv"
    return shutil.which("uv") or (str(local) if local.exists() else None)


def _build(env: Path, version: str, companions: dict[str, str]) -> None:
    if (Path(sys.prefix) / READY).exists():
        raise RuntimeError("overlays are built from the project environment, not from inside another overlay")
    uv = _uv()
    venv = [uv, "venv", "-q", "--python", sys.executable, str(env)] if uv else \
        [sys.executable, "-m", "venv", "--without-pip", str(env)]
    _call(venv, version)
    site = Path(subprocess.check_output([str(python_of(env)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    # addsitedir (not a bare path) so the project venv's own .pth files (its editable install) apply too
    (site / "_dropsweep_base.pth").write_text(f"import site; site.addsitedir({_base_site()!r})\n")
    # --no-deps: torch, numpy and the rest come from the project venv behind the overlay
    packages = ([f"bitsandbytes=={version}"] if version != "installed" else []) + \
        [f"{name}=={pin}" for name, pin in companions.items()]
    install = [uv, "pip", "install", "-q", "--python", str(python_of(env)), "--no-deps", *packages] if uv else \
        [sys.executable, "-m", "pip", "--python", str(python_of(env)), "install", "-q", "--no-deps", *packages]
    _call(install, version, companions)


def _call(command: list[str], version: str, companions: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = next((line for line in lines if "no version" in line.lower() or "not found" in line.lower()
                       or "no matching" in line.lower()), lines[-1] if lines else f"exit code {result.returncode}")
        reason = reason.lstrip("×╰─▶ ").removeprefix("cause:").strip().removeprefix("Because ")
        if version == "installed":
            raise ConfigError(f"{label(version, companions or {})} could not be installed ({reason.rstrip('.')}); "
                              f"pick another published release.")
        raise ConfigError(f"bnb={version} could not be installed ({reason.rstrip('.')}); "
                          f"use one of {', '.join(RELEASE_LINES)} or another published release.")


# Run by the overlay's python: checks what each pinned package requires against what the overlay
# sees (its own pins first, the project venv behind) and what dropsweep's libraries require of the
# pinned packages, then imports each pinned package. Prints one JSON object.
_PROBE = r"""
import importlib, json, sys
import importlib.metadata as m
from packaging.requirements import Requirement
from packaging.version import Version
pins = json.loads(sys.argv[1])
found, problems = {}, []
def have(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
for name in pins:
    for text in m.requires(name) or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        version = have(req.name)
        if version is None or not req.specifier.contains(Version(version), prereleases=True):
            problems.append([name, str(req), version])
for user in sys.argv[2].split(","):
    for text in (have(user) and m.requires(user)) or []:
        req = Requirement(text)
        key = req.name.lower().replace("_", "-")
        if key in [p.lower().replace("_", "-") for p in pins] and (req.marker is None or req.marker.evaluate({"extra": ""})):
            if not req.specifier.contains(Version(m.version(req.name)), prereleases=True):
                problems.append([user + " " + have(user), str(req), m.version(req.name)])
if problems:
    print(json.dumps({"found": found, "problems": problems}))
    sys.exit(0)
for name, module in pins.items():
    try:
        imported = importlib.import_module(module)
    except Exception as exc:
        text = (str(exc).strip().splitlines() or [""])[-1]
        print(json.dumps({"import_error": [name, f"{type(exc).__name__}: {text}"[:300]]}))
        sys.exit(0)
    found[name] = {"version": m.version(name), "file": getattr(imported, "__file__", None) or ""}
print(json.dumps({"found": found, "problems": problems}))
"""
USERS = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "tokenizers", "huggingface-hub",
         "safetensors")  # what dropsweep's jobs import: their requirements on a pinned package must hold


def _verify(env: Path, version: str, companions: dict[str, str]) -> dict:
    """Imports each pinned package in the overlay: its version must be the request, from the overlay,
    and what it requires (and what dropsweep's libraries require of it) must be met."""
    pins = ({"bitsandbytes": version} if version != "installed" else {}) | companions
    what = label(version, companions)
    result = subprocess.run([str(python_of(env)), "-c", _PROBE, json.dumps({n: module_of(n) for n in pins}),
                             ",".join(u for u in USERS if u not in pins)],
                            capture_output=True, text=True, env=os.environ | {"PYTHONNOUSERSITE": "1"})
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"{what} installed but cannot be checked here ({last}); "
                          f"pick another release.")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    if "import_error" in answer:
        name, error = answer["import_error"]
        fix = f"use one of {', '.join(RELEASE_LINES)}" if name == "bitsandbytes" else "pick another release"
        raise ConfigError(f"{what} installed but {name} cannot be imported here ({error.rstrip('.')}); {fix}.")
    for owner, requirement, have in answer["problems"]:
        needed = Requirement(requirement).name
        who = owner if owner in pins else f"{owner} (in the project venv)"
        if module_of(needed) == "torch":
            raise ConfigError(f"{what} needs another torch: {who} requires {requirement}, this environment has "
                              f"torch {have}; pick another release.")
        raise ConfigError(f"{what} cannot run here: {who} requires {requirement}, this environment has "
                          f"{needed} {have or '(none)'}; pick another release, or pin a matching {needed} with "
                          f"bnb.companions.")
    found = {name: info["version"] for name, info in answer["found"].items()}
    for name, pin in pins.items():
        info = answer["found"][name]
        if Version(info["version"]) != Version(pin) or not info["file"].startswith(str(env)):
            raise RuntimeError(f"the {what} environment imports {name} {info['version']} from {info['file']}")
    return found


def list_envs(cache_dir=None) -> list[dict]:
    rows = []
    root = envs_dir(cache_dir or default_cache_dir())
    for path in sorted(root.glob("*")):
        if not path.is_dir() or ".tmp" in path.name:
            continue
        ready = path / READY
        info = json.loads(ready.read_text()) if ready.exists() else {}
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
        rows.append({"name": path.name, "path": str(path), "ready": ready.exists(), "size_mb": round(size / 2**20, 1),
                     "bitsandbytes": info.get("bitsandbytes"), "companions": info.get("companions", {}),
                     "built_s": info.get("built_s")})
    return rows


def clean(cache_dir=None, name: str | None = None) -> list[str]:
    """Removes overlays (all, or one by name/version) with their locks. A running job keeps its open files."""
    root = envs_dir(cache_dir or default_cache_dir())
    removed = []
    for path in sorted(root.glob("*")):
        if name and path.name not in (name, f"{name}.lock", f"bnb-{name}", f"bnb-{name}.lock"):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.envs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=None, help="default: $DROPSWEEP_CACHE or ~/.cache/dropsweep")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the cached overlays")
    cleaner = sub.add_parser("clean", help="remove cached overlays")
    cleaner.add_argument("name", nargs="?", help="one overlay (bnb-0.50.2 or 0.50.2); default: all")
    ensurer = sub.add_parser("ensure", help="build (once) the overlay for a version")
    ensurer.add_argument("version", help="a bitsandbytes release, or `installed` for an overlay of companions only")
    ensurer.add_argument("companions", nargs="*", metavar="NAME=VERSION")
    args = parser.parse_args(argv)
    if args.command == "list":
        rows = list_envs(args.cache_dir)
        for row in rows:
            state = "ready" if row["ready"] else "unfinished (an interrupted build; `make clean-envs` removes it)"
            print(f"{row['name']:<40} {row['size_mb']:>7.1f} MB  {state}  {row['path']}")
        print(f"{len(rows)} environment(s) under {envs_dir(args.cache_dir or default_cache_dir())}")
    elif args.command == "clean":
        removed = clean(args.cache_dir, args.name)
        print(f"removed {len(removed)}: {', '.join(removed) or '-'}")
    else:
        companions = dict(pin.split("=", 1) for pin in args.companions)
        try:
            print(ensure(args.version, companions, args.cache_dir))
        except ConfigError as exc:
            print(f"dropsweep: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
