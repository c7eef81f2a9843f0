#!/usr/bin/env python3
"""Install detectron2 into the running interpreter's environment, offline but for the package index.

detectron2 is not published on the package index under its own name. The index holds
``sal-detectron2==0.7.2``: upstream detectron2 (commit a59f0563) as one ``cp310`` wheel whose only
compiled part, ``detectron2/_C*.so``, targets CPython 3.10. Nothing rba_plugin uses needs that
library (it serves rotated boxes, deformable convolution and the fast COCO evaluation), so this
script repackages the wheel as pure Python:

1. download the wheel with pip (``--python-version 3.10``, no dependencies);
2. drop ``detectron2/_C*.so`` and its RECORD line, retag WHEEL as ``py3-none-any``;
3. zip it again under a matching file name and ``pip install`` it (its declared dependencies are
   already pinned in requirements.txt, so pip only checks them).

Idempotent: exits early when the installed detectron2 already is this build. Any step that fails
prints what could not be obtained and exits non-zero.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DIST_NAME = "sal-detectron2"
VERSION = "0.7.2"
WHEEL_TAG = "py3-none-any"


def fail(message: str) -> "NoReturn":  # noqa: F821
    print(f"install_detectron2: {message}", file=sys.stderr)
    sys.exit(1)


def installed_version() -> str | None:
    try:
        return importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        return None


def download(dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.10", "-d", str(dest), f"{DIST_NAME}=={VERSION}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("sal_detectron2-*.whl"))
    if proc.returncode != 0 or not wheels:
        fail(
            f"could not download {DIST_NAME}=={VERSION} from the package index "
            f"(pip exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}"
        )
    return wheels[0]


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def repackage(src: Path, dest_dir: Path) -> Path:
    """Write a pure-Python copy of the wheel ``src`` (no ``_C`` library, tag py3-none-any)."""
    out = dest_dir / f"sal_detectron2-{VERSION}-{WHEEL_TAG}.whl"
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        dist_info = next((n.split("/")[0] for n in names if n.endswith(".dist-info/WHEEL")), None)
        if dist_info is None:
            fail(f"{src.name} has no .dist-info/WHEEL; not a wheel this script understands")
        compiled = [n for n in names if n.startswith("detectron2/_C") and n.endswith(".so")]
        if not compiled:
            fail(f"{src.name} has no detectron2/_C*.so; the upstream wheel changed, re-check the recipe")
        record_name = f"{dist_info}/RECORD"
        wheel_name = f"{dist_info}/WHEEL"
        kept: dict[str, bytes] = {}
        for name in names:
            if name in compiled or name == record_name:
                continue
            data = zin.read(name)
            if name == wheel_name:
                lines = [
                    f"Tag: {WHEEL_TAG}" if line.startswith("Tag:") else line
                    for line in data.decode().splitlines()
                ]
                lines = ["Root-Is-Purelib: true" if ln.startswith("Root-Is-Purelib:") else ln for ln in lines]
                data = ("\n".join(lines) + "\n").encode()
            kept[name] = data
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in kept.items()]
    record.append(f"{record_name},,")
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for name, data in kept.items():
            zout.writestr(name, data)
        zout.writestr(record_name, "\n".join(record) + "\n")
    return out


def verify() -> None:
    """detectron2 must import, and nothing may pull in the CPython-3.10 library."""
    code = (
        "import detectron2, detectron2.config, detectron2.engine, detectron2.projects.deeplab;"
        "import importlib.util, sys;"
        "sys.exit(1 if importlib.util.find_spec('detectron2._C') else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"detectron2 was installed but does not import cleanly:\n{proc.stderr.strip()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    args = parser.parse_args()

    if installed_version() == VERSION and not args.force:
        verify()
        print(f"install_detectron2: {DIST_NAME} {VERSION} already installed")
        return
    with tempfile.TemporaryDirectory(prefix="d2wheel-") as tmp:
        tmp_path = Path(tmp)
        original = download(tmp_path / "download")
        fixed_dir = tmp_path / "fixed"
        fixed_dir.mkdir()
        wheel = repackage(original, fixed_dir)
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            fail(f"pip could not install the repackaged wheel {wheel.name}:\n{proc.stderr.strip()[-2000:]}")
    verify()
    print(f"install_detectron2: installed {DIST_NAME} {VERSION} (pure Python, no detectron2._C)")


if __name__ == "__main__":
    main()
