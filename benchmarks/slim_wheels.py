"""Slim bitsandbytes wheels: keep the CPU library and the named CUDA builds, drop the rest.

A bitsandbytes wheel carries one native library per CUDA/ROCm/XPU toolkit (0.48.2: 59 MB,
0.50.2: 43 MB); a machine with one toolkit loads one of them. Slimmed to the CUDA 13 build
and the CPU fallback, every release from 0.48 on fits a few MB, so a whole version sweep fits
one 64 MiB transfer to an offline GPU machine.

    python -m benchmarks.slim_wheels bitsandbytes-0.48.2-*.whl bitsandbytes-0.50.2-*.whl --keep-cuda 130 -o wheels/

The slimmed wheel keeps its name and version and installs with plain pip; its RECORD lists
exactly the files left, with their sha256 and sizes, as the wheel format requires.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path

NATIVE = re.compile(r"libbitsandbytes_([a-z]+)(\d*)\.(so|dll|dylib)$")


def keep_file(name: str, cuda_versions: set[str]) -> bool:
    """Non-native files always; of the native libraries, the CPU one and the named CUDA builds."""
    match = NATIVE.search(name)
    if not match:
        return True
    backend, version = match.group(1), match.group(2)
    return backend == "cpu" or (backend == "cuda" and version in cuda_versions)


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim_wheel(wheel: Path, out_dir: Path, cuda_versions: set[str]) -> tuple[Path, list[str]]:
    """Writes the slimmed copy of `wheel` into `out_dir`; returns its path and the dropped files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel.name
    if target.resolve() == wheel.resolve():
        raise SystemExit(f"{wheel} would be overwritten; give -o another folder.")
    dropped, records, kept_cuda = [], [], []
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next((n for n in src.namelist() if n.endswith(".dist-info/RECORD")), None)
        if record_name is None:
            raise SystemExit(f"{wheel} has no .dist-info/RECORD: is it a wheel?")
        for info in src.infolist():
            if info.filename == record_name or info.is_dir():
                continue
            if not keep_file(info.filename, cuda_versions):
                dropped.append(info.filename)
                continue
            data = src.read(info.filename)
            if "cuda" in info.filename and NATIVE.search(info.filename):
                kept_cuda.append(info.filename)
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)  # keeps the file mode bits
            records.append(record_line(info.filename, data))
        records.append(f"{record_name},,")
        dst.writestr(src.getinfo(record_name), "\n".join(records) + "\n", compress_type=zipfile.ZIP_DEFLATED)
    if not kept_cuda:
        print(f"warning: {wheel.name} has no CUDA build {', '.join(sorted(cuda_versions))}: "
              f"the slim wheel runs on the CPU only", file=sys.stderr)
    return target, dropped


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheels", nargs="+", type=Path, help="bitsandbytes .whl files")
    parser.add_argument("--keep-cuda", default="130",
                        help="comma-separated CUDA builds to keep, as bitsandbytes names them (130 = CUDA 13.0)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder for the slimmed wheels")
    args = parser.parse_args(argv)
    cuda_versions = {v.strip() for v in args.keep_cuda.split(",") if v.strip()}
    total = 0
    for wheel in args.wheels:
        target, dropped = slim_wheel(wheel, args.out, cuda_versions)
        size = target.stat().st_size
        total += size
        print(f"{target}  {wheel.stat().st_size / 2**20:.1f} MiB -> {size / 2**20:.1f} MiB "
              f"({len(dropped)} native libraries dropped)")
    print(f"total {total / 2**20:.1f} MiB in {args.out}")


if __name__ == "__main__":
    main()
