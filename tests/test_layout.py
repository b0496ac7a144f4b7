"""Guards on the repository layout that keep `import platform` (and so ray/torch/uuid) working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_platform_folder_is_not_a_python_package():
    assert (ROOT / "platform").is_dir()
    assert not (ROOT / "platform" / "__init__.py").exists()
    assert not (ROOT / "platform.py").exists()
    assert not list((ROOT / "platform").rglob("*.py")), "platform/ holds deployment files, never Python modules"


def test_stdlib_platform_still_imports_from_repo_root():
    out = subprocess.run([sys.executable, "-c", "import platform; print(platform.system())"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() in {"Linux", "Darwin", "Windows"}


def test_import_packages_are_the_folders():
    import actors
    import apps
    import estimators

    for mod, name in ((actors, "actors"), (apps, "apps"), (estimators, "estimators")):
        assert Path(mod.__file__).resolve().parent == ROOT / name


# ------------------------------------------------------------------------------------------ the house by capability
import ast

CAPABILITIES = ("core", "catalog", "features", "selection", "detection", "active", "compression")
# what each capability may import from actors (DESIGN.md: core <- catalog <- features <- selection / detection
# <- active / compression <- apps); a capability always may import itself
MAY_IMPORT = {
    "core": set(),
    "catalog": {"core"},
    "features": {"core", "catalog"},
    "selection": {"core", "catalog", "features"},
    "detection": {"core", "catalog", "features"},
    "active": {"core", "catalog", "features", "selection", "detection"},
    "compression": {"core", "catalog", "features", "detection"},
}
# the Ray wrappers: the only modules of actors/ and estimators/ that may import ray (kernels never do)
RAY_MODULES = {
    "actors/core/runtime.py",
    "actors/features/embed.py",
    "actors/selection/actor.py",
    "actors/selection/mine.py",
    "actors/selection/sharded.py",
    "actors/detection/ray_train.py",
    "actors/active/ray_score.py",
    "actors/compression/ray_finetune.py",
}


def _imports(path: Path) -> list[str]:
    """Every module name imported anywhere in ``path`` (top level or inside functions)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append(node.module)
    return out


def _py(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_only_the_ray_wrappers_import_ray():
    offenders = [str(p.relative_to(ROOT)) for folder in ("actors", "estimators") for p in _py(folder)
                 if any(m == "ray" or m.startswith("ray.") for m in _imports(p))
                 and str(p.relative_to(ROOT)) not in RAY_MODULES]
    assert not offenders, f"these modules import ray but are not Ray wrappers (DESIGN.md): {offenders}"


def test_kernels_import_without_ray_installed():
    code = ("import sys; sys.modules['ray'] = None\n"
            "import actors, actors.selection.match, actors.selection.index, actors.features.encoder, "
            "actors.features.store, actors.catalog.ingest, estimators.laws, estimators.loc\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_importing_actors_changes_no_environment_and_imports_no_torch():
    code = ("import os, sys; before = dict(os.environ); import actors, actors.core, actors.catalog, actors.features, "
            "actors.selection\n"
            "assert dict(os.environ) == before, 'environment changed'\n"
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_capabilities_import_only_downward():
    bad = []
    for cap in CAPABILITIES:
        for p in _py(f"actors/{cap}"):
            for m in _imports(p):
                parts = m.split(".")
                if parts[0] == "apps" or (parts[0] == "actors" and len(parts) > 1 and parts[1] != cap
                                          and parts[1] not in MAY_IMPORT[cap]):
                    bad.append(f"{p.relative_to(ROOT)} imports {m}")
    for p in _py("estimators"):
        bad += [f"{p.relative_to(ROOT)} imports {m}" for m in _imports(p) if m.split(".")[0] in ("actors", "apps")]
    assert not bad, "imports that climb back up the house (DESIGN.md):\n" + "\n".join(bad)


def test_no_flat_modules_left_in_actors_and_each_subpackage_says_what_it_owns():
    assert not [p.name for p in (ROOT / "actors").glob("*.py") if p.name != "__init__.py"]
    for cap in CAPABILITIES:
        init = ROOT / "actors" / cap / "__init__.py"
        if init.exists():
            doc = ast.get_docstring(ast.parse(init.read_text()))
            assert doc and doc.startswith(f"{cap}:"), f"{init} must open by saying what {cap} owns"


def test_public_names_of_each_capability_resolve():
    import importlib

    for cap in CAPABILITIES:
        if not (ROOT / "actors" / cap / "__init__.py").exists():
            continue
        mod = importlib.import_module(f"actors.{cap}")
        for name in mod.__all__:
            assert getattr(mod, name) is not None, f"actors.{cap}.{name}"


def test_catalog_paths_are_named_in_one_place():
    offenders = [str(p.relative_to(ROOT)) for folder in ("actors", "apps", "bench") for p in _py(folder)
                 if '"catalog/images.parquet"' in p.read_text() or '"catalog/labels.parquet"' in p.read_text()]
    assert offenders == ["actors/catalog/schema.py"]


def test_repository_docs_point_at_nothing_outside_it():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "../shared" not in doc.read_text() and "shared/DESIGN" not in doc.read_text(), doc
