"""The worker's HTTP routes, one module per group, each an ``APIRouter`` that ``backend.worker.server`` includes:
:mod:`.status` (health, the space, projecting a transcript), :mod:`.traits` (the space's traits), :mod:`.sessions` (sessions and their turns),
:mod:`.controls` (a session's live controls), :mod:`.transfer` (export and import) and :mod:`.events` (the event
log, read or followed as server-sent events). Shared state comes from :mod:`backend.worker.state`."""
