"""Lint of the Dockerfile: hadolint, plus structural checks (no Docker engine on CI
machines, so the image is not built).

Guards: multi-stage, a numeric non-root USER in the final stage matching the pods'
runAsUser, no compilers or package managers installed there, the five entrypoints built
from the lock file, and a .dockerignore that keeps local state out of the context.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

from tests.deploy.manifests import ROOT, SERVICES, pod_spec, render, tool, workloads

BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|clang|make|build-essential|cargo|rustc|apt-get install|apk add|"
    r"pip install|uv pip|uv sync|git)\b"
)


@dataclass
class Stage:
    """One FROM ... section of the Dockerfile."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _stages() -> list[Stage]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest.strip(), re.IGNORECASE)
            assert match, line
            stages.append(Stage(match.group(1), match.group(2) or ""))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def test_dockerfile_is_multi_stage() -> None:
    """A build stage and a separate runtime stage that copies only the built venv."""
    stages = _stages()
    assert len(stages) >= 2
    final = stages[-1]
    copies = [rest for keyword, rest in final.instructions if keyword == "COPY"]
    assert copies, "the final stage must copy the build output"
    assert all(rest.startswith("--from=") for rest in copies), copies


def test_final_stage_runs_as_the_pods_non_root_user() -> None:
    """The last USER is numeric, not root, and equals every service pod's runAsUser."""
    users = [rest for keyword, rest in _stages()[-1].instructions if keyword == "USER"]
    assert users
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) > 10000
    for workload in workloads(render("overlays/prod")):
        if workload["metadata"]["name"].startswith("conclave-"):
            assert pod_spec(workload)["securityContext"]["runAsUser"] == int(uid)


def test_final_stage_has_no_build_tools() -> None:
    """Nothing in the final stage installs compilers or packages; pip is removed."""
    runs = [rest for keyword, rest in _stages()[-1].instructions if keyword == "RUN"]
    for run in runs:
        assert not BUILD_TOOLS.search(run), run
    assert any("pip uninstall" in run for run in runs)
    env = " ".join(rest for keyword, rest in _stages()[-1].instructions if keyword == "ENV")
    # Read-only root filesystem: bytecode is compiled at build time, never written later.
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_build_stage_installs_from_the_lock_file() -> None:
    """Dependencies come from uv.lock with hashes; all five services are installed."""
    build = " ".join(rest for keyword, rest in _stages()[0].instructions if keyword == "RUN")
    assert "--locked" in build
    assert "--require-hashes" in build
    for svc in SERVICES:
        assert f"services/{svc}" in build
        assert f"--package conclave-{svc}" in build
    assert "grpc_tools.protoc" in build
    assert "UV_COMPILE_BYTECODE=1" in " ".join(
        rest for keyword, rest in _stages()[0].instructions if keyword == "ENV"
    )


def test_one_image_for_all_services() -> None:
    """Every service Deployment runs the same image; its command picks the entrypoint."""
    images = set()
    for workload in workloads(render("overlays/prod")):
        name = workload["metadata"]["name"]
        if name.startswith("conclave-"):
            (container,) = pod_spec(workload)["containers"]
            images.add(container["image"])
            assert container["command"] == [name]
    assert len(images) == 1


def test_dockerignore_keeps_local_state_out() -> None:
    """Virtualenvs, git metadata, local data, generated code and key files are ignored."""
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (
        ".git",
        ".venv",
        ".conclave",
        ".gitignore",
        "libs/proto/src/conclave",
        "**/*.pem",
    ):
        assert entry in ignored, entry


def test_hadolint_finds_nothing() -> None:
    """hadolint (ShellCheck inside RUN included) reports no finding at any level."""
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
