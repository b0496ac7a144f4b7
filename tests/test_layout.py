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
