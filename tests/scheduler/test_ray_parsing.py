"""RayJobs' reading of Ray's JSON, without a cluster: GPU types, GPU attribution, packages, tokens."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from scheduler.ray_jobs import (
    RayJobStatus,
    gpu_type_of,
    gpus_held,
    package_working_dir,
    parse_job,
    parse_node,
    read_token,
)


def test_gpu_type_comes_from_the_accelerator_type_resource_else_default() -> None:
    assert gpu_type_of({"GPU": 2.0, "accelerator_type:A100": 1.0, "CPU": 8.0}) == "A100"
    assert gpu_type_of({"GPU": 2.0, "CPU": 8.0}) == "default"


def test_a_dead_node_reports_its_gpus_and_when_it_died() -> None:
    node = parse_node({"node_id": "n1", "state": "DEAD", "end_time_ms": 1_800_000_000_500,
                       "resources_total": {"GPU": 4.0, "accelerator_type:b": 1.0}})
    assert (node.alive, node.gpus, node.gpu_type, node.end_time) == (False, 4.0, "b", 1_800_000_000.5)


def test_gpus_held_counts_actors_tasks_and_groups_once_each() -> None:
    actors = [
        {"job_id": "02000000", "required_resources": {"GPU": 1.0}, "placement_group_id": None},
        {"job_id": "02000000", "required_resources": {"GPU": 1.0}, "placement_group_id": "pg1"},  # in the group
        {"job_id": "01000000", "required_resources": {}, "placement_group_id": None},  # a CPU-only supervisor
    ]
    tasks = [{"job_id": "03000000", "required_resources": {"GPU": 0.5, "CPU": 1.0}}]
    groups = [{"creator_job_id": "02000000", "bundles": [{"unit_resources": {"GPU": 2.0}}, {"unit_resources": {}}]}]
    assert gpus_held(actors, tasks, groups) == {"02000000": 3.0, "03000000": 0.5}


def test_a_job_reads_in_seconds_and_drivers_not_submitted_are_skipped() -> None:
    job = parse_job({"submission_id": "s1", "status": "FAILED", "message": "m", "start_time": 1500, "end_time": 2500,
                     "driver_node_id": "n", "job_id": "02000000", "error_type": "JOB_SUPERVISOR_ACTOR_DIED",
                     "metadata": {"startup": "acme"}})
    assert job is not None and job.status == RayJobStatus.FAILED and job.status.is_terminal()
    assert (job.start_time, job.end_time, job.metadata) == (1.5, 2.5, {"startup": "acme"})
    assert parse_job({"submission_id": None, "status": "RUNNING", "type": "DRIVER"}) is None


def test_a_working_dir_is_packaged_by_content_relative_to_its_root(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("print(1)\n")
    (tmp_path / "run.py").write_text("import src.a\n")
    name, data = package_working_dir(tmp_path)
    assert name.startswith("_ray_pkg_") and name.endswith(".zip")
    assert sorted(zipfile.ZipFile(io.BytesIO(data)).namelist()) == ["run.py", "src/a.py"]
    assert package_working_dir(tmp_path)[0] == name
    archive = tmp_path / "given.zip"
    archive.write_bytes(data)
    assert package_working_dir(archive) == (name, data)  # an archive travels as it is


def test_read_token_prefers_the_environment_then_the_path_then_the_home_file(tmp_path: Path) -> None:
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    (tmp_path / "t").write_text("path-token")
    assert read_token({"RAY_AUTH_TOKEN": "env-token"}, home=tmp_path) == "env-token"
    assert read_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "t")}, home=tmp_path) == "path-token"
    assert read_token({}, home=tmp_path) == "home-token"
    assert read_token({}, home=tmp_path / "nowhere") is None
