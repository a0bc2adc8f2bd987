"""Builds and transcript projections on Ray (a local cluster on this CPU) equal the single-process runs exactly.

One cluster serves the whole module, with four logical CPUs: two for the module's shared pair of actors and two for
the actors that a test's own driver (a killed build, the CLI) starts beside them. Exact equality needs the same
kernels on both sides: every actor has one CPU and so one torch thread, and the single-process references here run
with one thread too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import ray
import torch

from backend import cli
from backend.build.pipeline import build
from backend.build.plan import chunks_of, plan_units
from backend.build.settings import BuildSettings
from backend.build.workfolder import WorkFolder
from backend.catalogue import load_catalogue
from backend.cluster import ModelActor, RayError, RayModels, RayOptions, plan_actors, ray_options
from backend.errors import ModelLoadError
from backend.models.loading import load_model
from backend.reading.transcripts import TranscriptError, read_transcripts
from backend.store.space import load_space

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("pirate", "librarian", "ghost", "accountant", "poet")
SETTINGS = BuildSettings(
    prompts_per_role=2, questions_per_role=2, default_questions=2, max_new_tokens=6, batch_size=2,
    judge="none", min_in_role=1, roles=ROLES, umap_neighbors=3,
)  # fmt: skip
CLI_SETTINGS = [
    "--prompts-per-role", "2", "--questions-per-role", "2", "--default-questions", "2", "--max-new-tokens", "6",
    "--batch-size", "2", "--judge", "none", "--min-in-role", "1", "--roles", ",".join(ROLES),
]  # fmt: skip
ONE_CPU_EACH = ["--device", "cpu", "--ray-cpus-per-actor", "1"]


@contextmanager
def one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    """A local Ray cluster of four logical CPUs; yields its address (other processes join it)."""
    ray.init(num_cpus=4, object_store_memory=200 * 2**20, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smol_tokenizer) -> str:  # type: ignore[no-untyped-def]
    """A tiny random chat model saved as a model folder: what every actor loads."""
    from tests.helpers.tiny import tiny_model

    folder = tmp_path_factory.mktemp("ray_model") / "model"
    model = tiny_model("llama", n_layers=4, vocab=len(smol_tokenizer))
    model.generation_config.eos_token_id = smol_tokenizer.eos_token_id
    model.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The single-process build: (space, work folder)."""
    root = tmp_path_factory.mktemp("ray_reference")
    with one_thread():
        path = build(
            load_model(model_dir, device="cpu"), load_catalogue(), SETTINGS, root / "space", root / "work", log=lambda m: None
        )
    assert path is not None
    return load_space(path), root / "work"


def load_args(model_dir: str) -> dict[str, object]:
    return {"spec": model_dir, "cache": None, "trust_remote_code": False, "layers_path": None}


@pytest.fixture(scope="module")
def actors(cluster, model_dir):  # type: ignore[no-untyped-def]
    """Two actors holding the tiny model, one CPU each, shared by the module's tests."""
    with RayModels(load_args(model_dir), RayOptions(actors=2, cpus_per_actor=1, device="cpu"), log=lambda m: None) as models:
        yield models


def assert_same_build(work_a: Path, work_b: Path, space_a, space_b) -> None:  # type: ignore[no-untyped-def]
    """Same answers word for word, same captured means bit for bit, same space tensors bit for bit."""
    units = plan_units(load_catalogue(), SETTINGS, "model")
    for index in range(len(chunks_of(units, SETTINGS.batch_size))):
        units_a, means_a, records_a = WorkFolder(work_a).load(index)
        units_b, means_b, records_b = WorkFolder(work_b).load(index)
        assert units_a == units_b and records_a == records_b, index
        assert torch.equal(means_a, means_b), index
    assert sorted(space_a.tensors) == sorted(space_b.tensors)
    for name in space_a.tensors:
        assert torch.equal(space_a.tensors[name], space_b.tensors[name]), name
    assert space_a.manifest["roles"] == space_b.manifest["roles"]


def test_ray_build_equals_the_single_process_build(actors, reference, tmp_path) -> None:  # type: ignore[no-untyped-def]
    space, work = reference
    assert len(actors.actors) == 2 and actors.info.fingerprint == space.manifest["model"]["fingerprint"]
    path = build(None, load_catalogue(), SETTINGS, tmp_path / "space", tmp_path / "work", log=lambda m: None, executor=actors)
    assert path is not None
    assert_same_build(work, tmp_path / "work", space, load_space(path))


def test_killed_ray_build_resumes_and_equals_the_single_process_build(cluster, actors, model_dir, reference, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The CLI's build on Ray (one actor) is killed (SIGKILL) after some chunks are written; the same build on
    the shared pair of actors finishes the rest."""
    space, work = reference
    n_chunks = len(chunks_of(plan_units(load_catalogue(), SETTINGS, "model"), SETTINGS.batch_size))
    out, work_ray = tmp_path / "space", tmp_path / "work"
    command = [
        sys.executable, "-m", "backend", "build", "--model", model_dir, "--ray", cluster,
        "--ray-actors", "1", *ONE_CPU_EACH, "--out", str(out), "--work", str(work_ray), *CLI_SETTINGS,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunks = work_ray / "chunks"
    deadline = time.monotonic() + 240
    try:
        while len(list(chunks.glob("*.json"))) < 2:
            if process.poll() is not None:
                pytest.fail(f"the build ended before it was killed: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                pytest.fail("no two chunks were written within 240 s")
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()  # type: ignore[union-attr]
    done = len(list(chunks.glob("*.json")))
    assert 2 <= done < n_chunks and not out.exists()
    path = build(None, load_catalogue(), SETTINGS, out, work_ray, log=lambda m: None, executor=actors)
    assert path is not None
    assert_same_build(work, work_ray, space, load_space(path))


def write_transcripts(folder: Path) -> list[str]:
    folder.mkdir()
    long = []
    for n in range(6):
        long += [
            {"role": "user", "content": f"Question {n}: tell me about the sea."},
            {"role": "assistant", "content": f"Answer {n}: it is wide."},
        ]
    (folder / "b.json").write_text(
        json.dumps({"model": "m", "turns": 6, "conversation": [{"role": "system", "content": "Be brief."}, *long]})
    )
    (folder / "a.jsonl").write_text(
        json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}])
        + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A ghost."}]})
    )
    (folder / "c.json").write_text(json.dumps([{"role": "user", "content": "Sing"}, {"role": "assistant", "content": "La la."}]))
    return [str(folder / "c.json"), str(folder / "b.json"), str(folder / "a.jsonl")]  # not in name order


def test_project_transcript_on_ray_equals_without(cluster, actors, model_dir, reference, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    space, _ = reference
    files = write_transcripts(tmp_path / "t")
    common = ["project-transcript", *files, "--model", model_dir, "--device", "cpu", "--space", str(space.path)]
    common += ["--window", "80", "--tokens", "--json"]  # the long conversation is read in windows
    with one_thread():
        assert cli.main(common) == 0
    alone = json.loads(capsys.readouterr().out)
    assert cli.main([*common, "--ray", cluster, "--ray-actors", "2", *ONE_CPU_EACH]) == 0
    on_ray = json.loads(capsys.readouterr().out)
    names = [r["file"] for r in alone["transcripts"]]
    assert names == [files[0], files[1], f"{files[2]}:1", f"{files[2]}:3"]
    assert any(r["windowed"] for r in alone["transcripts"])
    assert on_ray == alone


def test_errors_on_the_actors_reach_the_driver_as_they_are(actors, reference, tmp_path) -> None:  # type: ignore[no-untyped-def]
    space, _ = reference
    transcript = read_transcripts([write_transcripts(tmp_path / "t")[0]])[0][1]
    with pytest.raises(TranscriptError, match=r"layer 99 is out of range: the model has layers 0\.\.3") as caught:
        actors.project(space, [transcript], {"layer": 99})
    assert "Traceback" not in str(caught.value) and "ray" not in str(caught.value).lower()
    assert actors.project(space, [transcript], {})[0]["layer"] == space.target_layer  # the actors are still there
    # An actor that dies while it starts: the driver names the error, and the actor's CPU comes back.
    before = ray.available_resources().get("CPU", 0)
    with pytest.raises(RayError, match="a Ray actor died .*TypeError: .*unexpected keyword argument 'bogus'"):
        RayModels({"spec": "x", "bogus": 1}, RayOptions(actors=1, cpus_per_actor=1, device="cpu"), log=lambda m: None)
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) >= before  # >=: an earlier test's actors may still be freeing theirs
    # A model an actor cannot load: the error is kept and raised by the actor's first call, whole.
    failed = ModelActor({"spec": str(tmp_path / "no-such-model")}, threads=None)
    with pytest.raises(ModelLoadError, match="no-such-model"):
        failed.info()


def test_actor_plans_fit_the_cluster() -> None:
    one_node = [{"CPU": 16.0, "GPU": 8.0}]
    assert plan_actors(one_node, RayOptions()) == plan_actors(one_node, RayOptions(device="cuda"))
    plan = plan_actors(one_node, RayOptions())
    assert (plan.count, plan.resources, plan.device) == (8, {"num_gpus": 1, "num_cpus": 1}, "cuda")
    plan = plan_actors(one_node, RayOptions(gpus_per_actor=4))
    assert (plan.count, plan.resources["num_gpus"], plan.device) == (2, 4, "auto")
    # an actor's GPUs must be on one node: 2 nodes of 3 GPUs hold two 2-GPU actors, not three
    assert plan_actors([{"CPU": 8, "GPU": 3}] * 2, RayOptions(gpus_per_actor=2)).count == 2
    with pytest.raises(RayError, match="do not fit"):
        plan_actors([{"CPU": 8, "GPU": 3}] * 2, RayOptions(gpus_per_actor=2, actors=3))
    plan = plan_actors(one_node, RayOptions(device="cpu", actors=4))
    assert (plan.count, plan.resources, plan.threads) == (4, {"num_cpus": 4}, 4)
    # CPU shares: three actors on two 8-CPU nodes get 4 CPUs each (5 would fit only two)
    assert plan_actors([{"CPU": 8}] * 2, RayOptions(actors=3)).resources == {"num_cpus": 4}
    with pytest.raises(RayError, match="need 3 CPUs"):
        plan_actors([{"CPU": 2}], RayOptions(actors=3))
    with pytest.raises(RayError, match="no node with 1 GPU"):
        plan_actors([{"CPU": 2}], RayOptions(device="cuda"))
    plan = plan_actors([{"CPU": 4}], RayOptions(actors=2, cpus_per_actor=1))
    assert (plan.count, plan.resources, plan.threads) == (2, {"num_cpus": 1}, 1)
    with pytest.raises(RayError, match="need 6 CPUs"):
        plan_actors([{"CPU": 4}], RayOptions(actors=3, cpus_per_actor=2))
    with pytest.raises(RayError, match="at least 1"):
        RayOptions(actors=0)


def test_ray_and_shard_do_not_go_together(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["build", "--out", "x", "--ray", "auto", "--shard", "0/2"]) == 2
    assert "--ray and --shard" in capsys.readouterr().err


def test_the_readme_ray_commands_parse_as_written() -> None:
    """The README's Ray build commands (section "Building for a large model") are accepted by the CLI as written."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Building for a large model") : text.index("## The shipped space")]
    recipe = re.search(r'RECIPE="([^"]+)"', section)
    assert recipe is not None
    lines = section.replace("\\\n", " ")  # continuation lines joined
    commands = [c.replace("$RECIPE", recipe.group(1)) for c in re.findall(r"python -m backend (build [^\n]*)", lines)]
    on_ray = [shlex.split(c) for c in commands if "--ray" in c]
    assert len(on_ray) == 2
    parsed = [cli.build_parser().parse_args(argv) for argv in on_ray]
    assert [ray_options(a) for a in parsed] == [RayOptions("HEAD:6379"), RayOptions("HEAD:6379", gpus_per_actor=2)]
    assert all((a.questions_per_role, a.prompts_per_role, a.recipe) == (240, 5, "paper") for a in parsed)
