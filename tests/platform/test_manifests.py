"""Every deployment file in platform/ parses, and each entrypoint, image and repository file it names exists."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLATFORM = ROOT / "platform"
YAMLS = sorted(PLATFORM.rglob("*.yaml"))
PIPELINES = sorted((PLATFORM / "pipelines").glob("*.toml"))


def _strings(node) -> list[str]:
    """Every string in a parsed YAML document; command lists also joined into one command line."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        out = [s for v in node for s in _strings(v)]
        if node and all(isinstance(v, str) for v in node):
            out.append(" ".join(shlex.quote(v) for v in node))
        return out
    return []


def _images(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in ("image", "worker_image") and isinstance(v, str)] + \
            [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def _docs() -> dict[Path, list]:
    return {p: [d for d in yaml.safe_load_all(p.read_text()) if d is not None] for p in YAMLS}


def dockerfile_tags() -> set[str]:
    return set(re.findall(r"^#\s+tag:\s+(\S+)", (PLATFORM / "docker" / "Dockerfile").read_text(), re.M))


def _commands(text: str) -> list[list[str]]:
    """``python -m MODULE ARGS`` command lines inside ``text`` (up to a shell separator)."""
    out = []
    for m in re.finditer(r"python3?\s+-m\s+[\w.]+[^;&|\n]*", text):
        out.append(shlex.split(m.group(0)))
    return out


def test_there_is_something_to_check():
    names = {p.relative_to(PLATFORM).as_posix() for p in YAMLS}
    assert {"kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/cronjob.yaml", "ray/cluster.yaml"} <= names
    assert PIPELINES and (PLATFORM / "docker" / "Dockerfile").exists()
    assert dockerfile_tags() == {"assay:cpu", "assay:gpu"}


def test_every_manifest_parses_and_names_only_images_the_dockerfile_builds():
    kinds = {}
    for path, docs in _docs().items():
        for d in docs:
            kinds[d.get("kind", path.name)] = path
            for image in _images(d):
                assert image in dockerfile_tags(), f"{path}: image {image} is not built by platform/docker/Dockerfile"
    assert {"RayCluster", "RayJob", "CronJob"} <= set(kinds)


def test_every_entrypoint_runs_a_real_module_with_valid_arguments():
    import typer

    from apps import jobs
    from apps.cli.main import app

    seen = 0
    for path, docs in _docs().items():
        for text in {s for d in docs for s in _strings(d)}:
            for argv in _commands(text):
                module = argv[2]
                rel = ROOT / (module.replace(".", "/") + ".py")
                assert rel.exists(), f"{path}: python -m {module}: no {rel.relative_to(ROOT)}"
                args = argv[3:]
                if module == "apps.jobs":
                    assert args[0] in jobs.STEPS, f"{path}: unknown step {args[0]}"
                    jobs._parser().parse_args(args)  # SystemExit on a bad option
                elif module == "apps.cli.main":
                    group = typer.main.get_command(app)
                    ctx = group.make_context("assay", list(args), resilient_parsing=True)
                    cmd, sub = group, list(args)
                    while sub and hasattr(cmd, "get_command") and cmd.get_command(ctx, sub[0]):
                        cmd, sub = cmd.get_command(ctx, sub[0]), sub[1:]
                    assert cmd is not group, f"{path}: no assay command in {args}"
                    cmd.make_context(cmd.name, sub)  # raises on a bad option/argument
                seen += 1
                for a in args:
                    if a.startswith("platform/"):
                        assert (ROOT / a).exists(), f"{path}: names {a}, which is not in the repository"
    assert seen >= 2


def test_every_repository_path_named_in_platform_exists():
    for path in [*YAMLS, *PIPELINES, PLATFORM / "docker" / "Dockerfile", PLATFORM / "README.md"]:
        for ref in re.findall(r"(?<![\w/.~])((?:platform|apps|actors|docs)/[\w./-]+\w)", path.read_text()):
            assert (ROOT / ref).exists() or (PLATFORM / ref).exists(), f"{path}: names {ref}, not in the repo"


def test_dockerfile_copies_what_exists_and_installs_real_extras():
    text = (PLATFORM / "docker" / "Dockerfile").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for src in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, re.M):
        for s in src.split():
            assert (ROOT / s).exists(), f"Dockerfile copies {s}, which is not in the repository"
    variants = set(re.findall(r"^FROM .* AS base-(\w+)$", text, re.M))
    assert variants == {"cpu", "gpu"} and variants <= set(extras)


@pytest.mark.parametrize("spec", PIPELINES, ids=lambda p: p.name)
def test_pipeline_specs_load(spec):
    from apps.schedule import load_pipeline

    p = load_pipeline(str(spec))
    assert p.name == spec.stem and p.queries and p.steps
