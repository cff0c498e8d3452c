"""Pack a newer Triton for the GPU machine, whose image has triton 3.6 and whose runs carry at most
64 MiB: the CUDA part of the wheel (no AMD backend, profiler libraries or legacy ptxas), with its
compiler library stripped of symbols, as one .tar.xz of about 57 MB (triton 3.9: 286 MB as a wheel).

    python benchmarks/pack_triton.py --version 3.9.0 --out .t39/triton.tar.xz   # here, ~5 min

On the GPU machine (carry the folder, here `.t39`, ignored by git):

    python3 -c "import tarfile; tarfile.open('.t39/triton.tar.xz').extractall('/tmp/t39')"
    export TRITON_BACKENDS_IN_TREE=1 PYTHONPATH=/tmp/t39:$PWD   # in-tree backends: no AMD entry point

Needs pip, `strip` (binutils) and network access to PyPI; downloads into a temporary folder.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# Not needed to compile and launch for NVIDIA GPUs of sm_90 and newer (ptxas-blackwell serves them).
DROP = ("triton/backends/amd/", "triton/backends/nvidia/lib/cupti", "triton/backends/nvidia/bin/ptxas",
        "triton/instrumentation/", "triton/_C/libproton.so")
KEEP = ("triton/backends/nvidia/bin/ptxas-blackwell",)


def pack(version: str, out: Path, python_version: str = "3.12") -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--python-version", python_version, "--implementation", "cp",
                        "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "-d", tmp, f"triton=={version}"], check=True)
        wheel = next(Path(tmp).glob("triton-*.whl"))
        root = Path(tmp) / "tree"
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(KEEP) or not name.startswith(DROP):
                    z.extract(name, root)
        for binary in list((root / "triton" / "backends" / "nvidia" / "bin").iterdir()):
            binary.chmod(0o755)
        subprocess.run(["strip", "--strip-unneeded", str(root / "triton" / "_C" / "libtriton.so")], check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out, "w:xz", preset=9) as tar:
            for path in sorted(root.iterdir()):
                tar.add(path, arcname=path.name)
        shutil.rmtree(root)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="3.9.0")
    parser.add_argument("--out", type=Path, default=Path(".t39/triton.tar.xz"))
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    args = parser.parse_args()
    out = pack(args.version, args.out, args.python_version)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
