"""`make wheel-check`: build the wheel and install it as a user would, away from the repository.

1. `python -m build --wheel` into dist/; the wheel must hold jaxpong/data/*.json (the simulator's shipped
   distributions) and no tests.
2. A fresh venv in a temporary folder; the mpich wheel first (it brings mpicc), then the jaxpong wheel with
   its mpich extra, mpi4jax compiled CPU-only against that mpicc: the steps of docs/install.md.
3. From another temporary folder: `jaxpong --help`, `jaxpong --version` (the version of pyproject.toml),
   the installed package finds its shipped data, and the README's "From Python" example runs as written.

Takes several minutes (jax, envpool, a compiled mpi4jax); pip's cache makes a second run faster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(cmd: list, cwd: Path | None = None, env: dict | None = None) -> str:
    print("+", " ".join(map(str, cmd)), flush=True)
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(
            f"wheel-check: failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}"
            f"{proc.stderr[-3000:]}"
        )
    return proc.stdout


def build_wheel(dist: Path) -> Path:
    shutil.rmtree(dist, ignore_errors=True)
    # setuptools reuses build/lib: a module deleted from the source would otherwise still be packaged.
    shutil.rmtree(REPO / "build", ignore_errors=True)
    run([sys.executable, "-m", "build", "--wheel", "--outdir", dist, REPO])
    (wheel,) = dist.glob("jaxpong-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(f"jaxpong/data/{p.name}" for p in (REPO / "jaxpong" / "data").glob("*.json"))
    packaged = sorted(n for n in names if n.startswith("jaxpong/data/"))
    if not shipped or packaged != shipped:
        sys.exit(f"wheel-check: {wheel.name} holds {packaged}, not the shipped data {shipped}")
    if any(n.startswith(("tests/", "configs/", "runs/")) for n in names):
        sys.exit(f"wheel-check: {wheel.name} holds files outside the package")
    print(f"wheel: {wheel} ({len(names)} files; data: {', '.join(packaged)})")
    return wheel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="python3", help="the interpreter of the fresh venv")
    parser.add_argument("--keep", action="store_true", help="keep the temporary venv (its path is printed)")
    args = parser.parse_args()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (mpich,) = project["optional-dependencies"]["mpich"]

    wheel = build_wheel(REPO / "dist")
    tmp = Path(tempfile.mkdtemp(prefix="jaxpong-wheel-check-"))
    try:
        venv, nocuda, elsewhere = tmp / "venv", tmp / "nocuda", tmp / "elsewhere"
        nocuda.mkdir()
        elsewhere.mkdir()
        run([args.python, "-m", "venv", venv])
        python, bin_dir = venv / "bin" / "python", venv / "bin"
        run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"])
        # docs/install.md's steps: MPI's compiler wrapper first, then the wheel; mpi4jax builds CPU-only against it.
        run([python, "-m", "pip", "install", "-q", mpich])
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "CUDA_PATH": str(nocuda),
            "MPI4JAX_BUILD_MPICC": str(bin_dir / "mpicc"),
        }
        run([python, "-m", "pip", "install", "-q", f"{wheel}[mpich]"], env=env)

        clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        help_text = run([bin_dir / "jaxpong", "--help"], cwd=elsewhere, env=clean_env)
        for command in ("train", "eval", "video", "plot", "export", "bench", "report", "simulate"):
            if command not in help_text:
                sys.exit(f"wheel-check: `jaxpong --help` does not list {command}:\n{help_text}")
        version = run([bin_dir / "jaxpong", "--version"], cwd=elsewhere, env=clean_env).strip()
        if version != f"jaxpong {project['version']}":
            sys.exit(f"wheel-check: `jaxpong --version` says {version!r}, pyproject.toml {project['version']!r}")
        where = run(
            [
                python,
                "-c",
                "import json, jaxpong, jaxpong.scale.simulate as s; "
                "json.loads(s.DEFAULTS_FILE.read_text()); print(jaxpong.__file__, s.DEFAULTS_FILE)",
            ],
            cwd=elsewhere,
            env=clean_env,
        ).split()
        if any(Path(p).resolve().is_relative_to(REPO) for p in where):
            sys.exit(f"wheel-check: the package was imported from the repository ({where}), not the install")
        # The README's "From Python" example, as written, from the install (a short training, then play).
        readme = (REPO / "README.md").read_text().split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
        example = readme.split("```python\n", 1)[1].split("```", 1)[0]
        (elsewhere / "example.py").write_text(example)
        printed = run([python, "example.py"], cwd=elsewhere, env=clean_env).strip().splitlines()[-1]
        print(
            f"wheel-check: ok: {wheel.name} installs with [mpich] into a fresh venv; `jaxpong --help` and "
            f"`--version` ({version}) work from {elsewhere}; shipped data at {where[1]}; the README's Python "
            f"example ran there and printed {printed!r}"
        )
    finally:
        if args.keep:
            print(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
