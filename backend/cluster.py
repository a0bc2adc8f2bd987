"""Builds and transcript projections on a Ray cluster: actors that each hold the model.

``--ray auto`` connects to a running cluster (``RAY_ADDRESS``, or one started on this machine with ``ray start``)
or starts a local one; ``--ray ADDRESS`` connects to that cluster. Ray places the actors: one per GPU (or per
``gpus_per_actor`` GPUs, for a model that needs several; GPUs are Ray resources), or on CPUs ``actors`` actors that
share the CPUs. Each actor loads the model once; the driver sends it work (build chunks, or conversations) and keeps
two tasks queued per actor so that it never waits on the driver.

Nothing is scheduled or retried by hand: Ray restarts an actor that dies (once) and reruns its task. The driver
writes every finished chunk into the work folder as it arrives (:class:`backend.build.workfolder.WorkFolder`), so a killed
build resumes as the single-process build does. Chunks keep their seeds (``chunk_seed(seed, index)``) and transcripts
are returned in input order, so the results equal the single-process run's, given the same kernels (same device
kind and, on CPUs, the same number of threads per process).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backend.errors import PersonaSpaceError

if TYPE_CHECKING:
    from backend.build.local import ChunkResult
    from backend.build.plan import Unit
    from backend.build.settings import BuildSettings
    from backend.models.loading import LoadedModel, ModelInfo
    from backend.reading.transcripts import Transcript
    from backend.store.space import Space

RAY_HINT = "Ray is not installed in this environment: run `make setup` (or `.venv/bin/pip install -r requirements.txt`)"
IN_FLIGHT = 2  # tasks queued per actor: the next one starts while the driver stores the last one's result


class RayError(PersonaSpaceError):
    """Ray is missing, the cluster cannot hold the actors asked for, or an actor failed."""


@dataclass(frozen=True)
class RayOptions:
    """``address``: ``"auto"`` or a cluster address (``host:6379``, ``ray://host:10001``). ``actors``: how many
    (default: one per ``gpus_per_actor`` GPUs, or 1 on a cluster without GPUs). ``cpus_per_actor``: Ray CPUs (and,
    on CPUs, torch threads) per actor. ``device``: ``None`` (GPUs when the cluster has them), ``"cpu"``, ``"cuda"``."""

    address: str = "auto"
    actors: int | None = None
    gpus_per_actor: int = 1
    cpus_per_actor: int | None = None  # default: 1 beside GPUs; on CPUs an even share of the cluster's
    device: str | None = None

    def __post_init__(self) -> None:
        for flag, value in (("actors", self.actors), ("cpus-per-actor", self.cpus_per_actor)):
            if value is not None and (isinstance(value, bool) or value < 1):
                raise RayError(f"--ray-{flag} must be at least 1, got {value}")
        if isinstance(self.gpus_per_actor, bool) or self.gpus_per_actor < 1:
            raise RayError(f"--ray-gpus-per-actor must be at least 1, got {self.gpus_per_actor}")
        if not self.address:
            raise RayError("--ray needs `auto` or a cluster address such as head-node:6379")


@dataclass(frozen=True)
class ActorPlan:
    """How many actors, the Ray resources of each, and the device and torch threads each uses."""

    count: int
    resources: dict[str, int]
    device: str
    threads: int | None


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayError(RAY_HINT) from exc
    return ray


def connect(address: str) -> None:
    """Join the cluster at ``address`` (``"auto"``: a running one, else a new local one); once per process."""
    ray = _ray()
    if ray.is_initialized():
        return
    backend_dir = os.path.dirname(os.path.abspath(__file__))  # the backend package itself
    try:  # the nodes need the dependencies installed, not this checkout: Ray ships the package to them
        ray.init(
            address=None if address == "auto" else address, logging_level="WARNING", runtime_env={"py_modules": [backend_dir]}
        )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise RayError(f"cannot reach a Ray cluster at {address!r}: {exc}") from exc


def plan_actors(nodes: Sequence[dict[str, float]], options: RayOptions) -> ActorPlan:
    """Fit the actors onto the cluster's nodes (``nodes``: each alive node's total resources, e.g. ``{"CPU": 8,
    "GPU": 2}``). An actor must fit on one node; a plan the cluster cannot hold is refused (it would wait forever)."""
    cpus = [int(n.get("CPU", 0)) for n in nodes]
    gpus = [int(n.get("GPU", 0)) for n in nodes]
    device = options.device
    if device not in (None, "cpu") and not device.startswith("cuda"):
        raise RayError(f"with --ray the device is cpu or cuda (or unset: GPUs when the cluster has them), got {device!r}")
    if device is None:
        device = "cuda" if sum(gpus) else "cpu"
    if device != "cpu":
        each = options.gpus_per_actor
        fit = sum(g // each for g in gpus)
        if fit == 0:
            raise RayError(f"the Ray cluster has no node with {each} GPU(s) (GPUs per node: {gpus}); use --device cpu")
        count = options.actors or fit
        if count > fit:
            raise RayError(f"{count} actors of {each} GPU(s) do not fit on the cluster's GPUs (per node: {gpus})")
        # One GPU: the actor's visible GPU is cuda:0. Several: spread the model over them (device_map="auto").
        resources = {"num_gpus": each, "num_cpus": options.cpus_per_actor or 1}
        return ActorPlan(count, resources, "cuda" if each == 1 else "auto", None)
    count = options.actors or 1
    if options.cpus_per_actor is not None:
        share = options.cpus_per_actor if sum(c // options.cpus_per_actor for c in cpus) >= count else 0
    else:  # the largest even share that fits
        share = max((s for s in range(1, max(cpus, default=0) + 1) if sum(c // s for c in cpus) >= count), default=0)
    if share == 0:
        need = count * (options.cpus_per_actor or 1)
        raise RayError(f"{count} actors need {need} CPUs; the Ray cluster has {sum(cpus)} (per node: {cpus})")
    return ActorPlan(count, {"num_cpus": share}, "cpu", share)


class ModelActor:
    """Runs inside a Ray worker process: loads the model once, then runs chunks and projections with it."""

    def __init__(self, load: dict[str, Any], threads: int | None) -> None:
        import torch

        from backend.models.loading import load_model

        if threads:
            torch.set_num_threads(threads)
        self.error: PersonaSpaceError | None = None
        try:
            self.loaded: LoadedModel | None = load_model(**load)
        except PersonaSpaceError as exc:  # kept and raised by info(): an error in __init__ reaches the driver garbled
            self.loaded, self.error = None, exc

    def _model(self) -> LoadedModel:
        if self.loaded is None:
            raise self.error or RayError("the actor holds no model")
        return self.loaded

    def info(self) -> ModelInfo:
        return self._model().info

    def chunk(self, index: int, units: list[Unit], settings: BuildSettings) -> ChunkResult:
        from backend.build.local import run_chunk

        means, records = run_chunk(self._model(), units, settings, index)
        return index, means, records

    def project(self, index: int, space: Space, transcript: Transcript, options: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        from backend.reading.transcripts import project_transcript

        return index, project_transcript(self._model(), space, transcript, **options)


class RayModels:
    """A set of :class:`ModelActor` on a Ray cluster; a :class:`backend.build.local.ChunkExecutor`. Use as a context
    manager: the actors are ended on exit."""

    def __init__(self, load: dict[str, Any], options: RayOptions, log: Callable[[str], None] = print) -> None:
        ray = _ray()
        connect(options.address)
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        plan = plan_actors(nodes, options)
        actor = ray.remote(ModelActor).options(**plan.resources, max_restarts=1, max_task_retries=1)
        log(f"Ray: {plan.count} actor(s), each {plan.resources}, loading {load['spec']} on {plan.device}")
        self.actors = [actor.remote({**load, "device": plan.device}, plan.threads) for _ in range(plan.count)]
        try:
            infos: list[ModelInfo] = self._get([a.info.remote() for a in self.actors])
        except BaseException:
            self.close()
            raise
        prints = sorted({i.fingerprint for i in infos})
        if len(prints) > 1:
            self.close()
            raise RayError(f"the actors loaded different models (fingerprints {prints}): give every node the same model files")
        self.info = infos[0]

    def __enter__(self) -> RayModels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        ray = _ray()
        for actor in getattr(self, "actors", []):
            ray.kill(actor)
        self.actors = []

    def _get(self, refs: Any) -> Any:
        ray = _ray()
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, PersonaSpaceError):
                raise exc.cause from None  # our own message, without Ray's wrapping
            raise RayError(f"a Ray task failed: {exc.cause!r}; what finished is kept: rerun the same command to go on") from exc
        except ray.exceptions.RayActorError as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            why = lines[0] if len(lines) < 2 else f"{lines[0]} … {lines[-1]}"  # the last line names the error
            raise RayError(f"a Ray actor died ({why}); what finished is kept: rerun the same command to go on") from exc

    def _dispatch(self, method: str, calls: Sequence[tuple[Any, ...]]) -> Iterator[Any]:
        """Call ``method`` on the actors once per argument tuple; yields results as they finish, keeping
        :data:`IN_FLIGHT` calls queued on each actor."""
        ray = _ray()
        waiting = list(reversed(calls))
        running: dict[Any, Any] = {}  # ref -> actor

        def submit(actor: Any) -> None:
            if waiting:
                running[getattr(actor, method).remote(*waiting.pop())] = actor

        for actor in self.actors:
            for _ in range(IN_FLIGHT):
                submit(actor)
        while running:
            [done], _ = ray.wait(list(running), num_returns=1)
            actor = running.pop(done)
            yield self._get(done)
            submit(actor)

    def run(self, chunks: dict[int, list[Unit]], settings: BuildSettings) -> Iterator[ChunkResult]:
        """The chunks' results, as they finish (a :class:`backend.build.local.ChunkExecutor`)."""
        return self._dispatch("chunk", [(index, units, settings) for index, units in chunks.items()])

    def project(
        self, space: Space, transcripts: Sequence[Transcript], options: dict[str, Any], progress: Callable[[], None] | None = None
    ) -> list[dict[str, Any]]:
        """``project_transcript`` of each transcript (``options``: its keyword arguments), in input order."""
        ray = _ray()
        space.check_model(self.info.fingerprint, self.info.name)
        ref = ray.put(space)  # stored once, shared by every actor on a node
        results: list[dict[str, Any] | None] = [None] * len(transcripts)
        for index, result in self._dispatch("project", [(i, ref, t, options) for i, t in enumerate(transcripts)]):
            results[index] = result
            if progress is not None:
                progress()
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RayError(f"no result came back for transcripts {missing[:5]}")
        return [r for r in results if r is not None]


def load_args(args: Any) -> dict[str, Any]:
    """``load_model``'s keyword arguments from the CLI's model options (the device is the actor plan's)."""
    return {"spec": args.model, "cache": args.cache, "trust_remote_code": args.trust_remote_code, "layers_path": args.layers_path}


def ray_options(args: Any) -> RayOptions:
    return RayOptions(
        address=args.ray, actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor,
        cpus_per_actor=args.ray_cpus_per_actor, device=args.device,
    )  # fmt: skip


def add_ray_args(parser: Any, what: str) -> None:
    parser.add_argument(
        "--ray", default=None, metavar="auto|ADDRESS",
        help=f"run {what} on Ray actors that each hold the model: `auto` (a running cluster, else a local one) or a "
        "cluster address; one actor per GPU, or --ray-actors on CPUs",
    )  # fmt: skip
    parser.add_argument("--ray-actors", type=int, default=None, help="number of actors (default: one per GPU group, 1 on CPUs)")
    parser.add_argument("--ray-gpus-per-actor", type=int, default=1, help="GPUs per actor, for a model that needs several")
    parser.add_argument(
        "--ray-cpus-per-actor", type=int, default=None,
        help="CPUs per actor (on CPUs also its torch threads; default: 1 beside GPUs, else an even share)",
    )  # fmt: skip
