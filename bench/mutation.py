"""Mutation score of the pure modules, measured with mutmut (``make mutation``; not part of CI: minutes per module).

Each module runs alone, in a scratch copy of the checkout (``backend``, ``app``, ``tests``, ``assets``, ``pyproject.toml``) with
a ``setup.cfg`` naming that module and its fast unit tests, so nothing is written into the working tree and one
module's tests never count for another's. mutmut forks a test run per mutant after importing once, and runs only
the tests that reached the mutated function.

A mutant is *killed* when a test fails (or the run times out), *survived* when every test passes, *no tests* when no
test reaches it. Mutants known to be equivalent (no test could tell them apart from the real code) are listed with a
reason in ``bench/mutation_equivalent.json``, keyed by mutmut's name and the mutated line; they leave the score's
denominator. Score = killed / (killed + survived + no tests - equivalent).

Writes ``reports/mutation/report.md`` and ``report.json``; the last line printed is JSON::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/mutation.py [--only frontier,windows] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = Path(sys.executable).parent / "mutmut"
EQUIVALENT = ROOT / "bench" / "mutation_equivalent.json"
REPORTS = ROOT / "reports" / "mutation"

# module -> its fast unit tests (no worker process, no browser, no download)
# Functions, methods and classes left unmutated (their whole body), with the reason: plumbing that the integration
# tests drive through a real worker (threads, ASGI, UMAP refits), or drawing code; not rules. Marked in the
# scratch copy only.
SKIP: dict[str, list[str]] = {
    "frontier": ["tradeoff_figure"],  # the plotly figure
    "placement": ["warm_up", "wait", "phase", "reducer", "umap", "place"],  # UMAP refit in a thread
    "guards": ["_answer", "Gate", "BodyLimit", "_TooLarge", "EventNotifier"],  # ASGI middleware, asyncio wake-ups
}

MODULES: dict[str, tuple[str, list[str]]] = {
    "frontier": (
        "backend/view/frontier.py",
        [
            "tests/unit/test_cap_eval.py::test_frontier_on_a_fixed_table",
            "tests/unit/test_survivors_rules.py",
            "tests/unit/test_laws.py",
        ],
    ),
    "windows": ("backend/reading/windows.py", ["tests/unit/test_survivors_rules.py", "tests/unit/test_laws.py"]),
    "placement": ("backend/reading/placement.py", ["tests/unit/test_survivors_values.py", "tests/unit/test_laws.py"]),
    "axis": ("backend/maths/axis.py", ["tests/unit/test_axis.py", "tests/unit/test_maths.py"]),
    "edits": ("backend/maths/edits.py", ["tests/unit/test_axis.py", "tests/unit/test_laws.py", "tests/unit/test_maths.py"]),
    "pca": ("backend/maths/pca.py", ["tests/unit/test_axis.py", "tests/unit/test_maths.py"]),
    "divergence": ("backend/maths/divergence.py", ["tests/unit/test_cap_eval.py::test_kl_oracles", "tests/unit/test_maths.py"]),
    "sampling": (
        "backend/maths/sampling.py",
        [
            "tests/unit/test_decode.py::test_repetition_penalty_is_hf_semantics_over_the_reply",
            "tests/unit/test_decode.py::test_batched_top_p_sampling_keeps_each_rows_nucleus",
            "tests/unit/test_decode.py::test_repetition_penalty_control_is_validated",
            "tests/unit/test_decode.py::test_top_p_fast_path_draws_what_a_full_sort_draws",
            "tests/unit/test_maths.py",
        ],
    ),
    "bootstrap": ("backend/maths/bootstrap.py", ["tests/unit/test_cap_eval_stats.py", "tests/unit/test_maths.py"]),
    "recipes": ("backend/build/recipes.py", ["tests/unit/test_space_recipes.py", "tests/unit/test_recipes_rows.py"]),
    "imports": ("backend/worker/imports.py", ["tests/unit/test_imports_rows.py", "tests/unit/test_survivors_values.py"]),
    "guards": ("backend/worker/guards.py", ["tests/unit/test_survivors_values.py", "tests/unit/test_survivors_guards.py"]),
}


def _exists(test: str) -> bool:
    return (ROOT / test.split("::")[0]).exists()


_RESULT = re.compile(r"^\s*(\S+__mutmut_\d+): (.+)$")


def _scratch(module: str, tests: list[str], skip: list[str], work: Path) -> Path:
    """A copy of the checkout that mutmut may write into, configured for one module."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "mutants")
    for name in ("backend", "app", "tests", "assets"):
        shutil.copytree(ROOT / name, work / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
    source = work / module
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    for name in skip:
        heads = (f"def {name}(", f"async def {name}(", f"class {name}(", f"class {name}:")
        at = next(i for i, line in enumerate(lines) if line.lstrip().startswith(heads))
        lines[at] = lines[at].rstrip("\n") + "  # pragma: no mutate block\n"
    source.write_text("".join(lines), encoding="utf-8")
    existing = [t for t in tests if _exists(t)]
    (work / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths=backend\n"
        "also_copy=\n    app\n    assets\n"
        f"only_mutate={module}\n"
        "pytest_add_cli_args_test_selection=\n" + "".join(f"    {t}\n" for t in existing) + "pytest_add_cli_args=\n"
        "    -p\n    no:cacheprovider\n    -q\n",
        encoding="utf-8",
    )
    return work


def _diff(work: Path, name: str, env: dict[str, str]) -> str:
    shown = subprocess.run([str(MUTMUT), "show", name], cwd=work, env=env, capture_output=True, text=True, check=False)
    return shown.stdout


def _changed_line(diff: str) -> str:
    """The mutated line of a mutant's diff (its first ``+`` line), stripped: the key equivalences are checked by."""
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            return line[1:].strip()
    return ""


def run_module(key: str, module: str, tests: list[str], jobs: int, equivalent: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    work = _scratch(module, tests, SKIP.get(key, []), Path(tempfile.gettempdir()) / "persona-mutation" / key)
    started = time.monotonic()
    run = subprocess.run(
        [str(MUTMUT), "run", "--max-children", str(jobs)], cwd=work, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    listed = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"], cwd=work, env=env, capture_output=True, text=True, check=False
    )
    status: dict[str, str] = {}
    for line in listed.stdout.splitlines():
        m = _RESULT.match(line)
        if m:
            status[m.group(1)] = m.group(2).strip()
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    survivors, marked, stale = [], [], []
    for name, s in sorted(status.items()):
        if s not in ("survived", "no tests"):
            continue
        diff = _diff(work, name, env)
        line = _changed_line(diff)
        known = equivalent.get(name)
        if known is not None and known.get("line") == line:
            marked.append({"mutant": name, "line": line, "reason": known["reason"]})
            continue
        if known is not None:
            stale.append(name)
        survivors.append({"mutant": name, "status": s, "line": line, "diff": diff.strip()})
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    scored = killed + counts.get("survived", 0) + counts.get("no tests", 0) - len(marked)
    return {
        "module": module,
        "tests": [t for t in tests if _exists(t)],
        "mutants": len(status),
        "counts": counts,
        "killed": killed,
        "equivalent": marked,
        "survivors": survivors,
        "stale_equivalences": stale,
        "score": round(killed / scored, 4) if scored else None,
        "seconds": round(seconds, 1),
        "rc": run.returncode,
        "log_tail": "" if status else (run.stdout + run.stderr)[-2000:],
    }


def _markdown(results: list[dict[str, Any]], total: dict[str, Any]) -> str:
    out = ["# Mutation score (mutmut)", "", "| module | mutants | killed | survived | no tests | equivalent | score | seconds |"]
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        c = r["counts"]
        score = "n/a" if r["score"] is None else f"{r['score']:.1%}"
        out.append(
            f"| `{r['module']}` | {r['mutants']} | {r['killed']} | {c.get('survived', 0)} | {c.get('no tests', 0)} "
            f"| {len(r['equivalent'])} | {score} | {r['seconds']} |"
        )
    out += ["", f"Overall: {total['killed']} of {total['scored']} non-equivalent mutants killed ({total['score']:.1%}).", ""]
    for r in results:
        if r["survivors"]:
            out += [f"## Survivors in `{r['module']}`", ""]
            for s in r["survivors"]:
                out += [f"### {s['mutant']} ({s['status']})", "", "```diff", s["diff"], "```", ""]
        if r["equivalent"]:
            out += [f"## Equivalent in `{r['module']}`", ""]
            out += [f"* `{e['mutant']}`: `{e['line']}`: {e['reason']}" for e in r["equivalent"]] + [""]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated modules (default all: {','.join(MODULES)})")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once")
    args = parser.parse_args()
    keys = [k for k in args.only.split(",") if k] or list(MODULES)
    unknown = sorted(set(keys) - set(MODULES))
    if unknown:
        parser.error(f"unknown modules {unknown}; known: {', '.join(MODULES)}")
    equivalent = json.loads(EQUIVALENT.read_text(encoding="utf-8")) if EQUIVALENT.exists() else {}
    results = []
    for key in keys:
        module, tests = MODULES[key]
        r = run_module(key, module, tests, args.jobs, equivalent)
        results.append(r)
        score = "n/a" if r["score"] is None else f"{r['score']:.1%}"
        print(f"{key}: {r['killed']}/{r['mutants'] - len(r['equivalent'])} killed ({score}) in {r['seconds']} s", flush=True)
    # modules not rerun keep their last figures (a module-by-module run builds up one report)
    previous = REPORTS / "report.json"
    if previous.exists() and args.only:
        kept = [
            r
            for r in json.loads(previous.read_text(encoding="utf-8"))["modules"]
            if r["module"] not in {x["module"] for x in results}
        ]
        order = {m: i for i, (m, _) in enumerate(MODULES.values())}
        results = sorted(kept + results, key=lambda r: order.get(r["module"], len(order)))
    keys = [next(k for k, (m, _) in MODULES.items() if m == r["module"]) for r in results]
    killed = sum(r["killed"] for r in results)
    scored = killed + sum(len(r["survivors"]) for r in results)
    total = {"killed": killed, "scored": scored, "score": killed / scored if scored else 0.0}
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "report.json").write_text(json.dumps({"modules": results, **total}, indent=1), encoding="utf-8")
    (REPORTS / "report.md").write_text(_markdown(results, total), encoding="utf-8")
    summary = {
        "score": round(total["score"], 4),
        "killed": killed,
        "scored": scored,
        "modules": {k: r["score"] for k, r in zip(keys, results, strict=True)},
        "survivors": sum(len(r["survivors"]) for r in results),
        "seconds": round(sum(r["seconds"] for r in results), 1),
        "report": str((REPORTS / "report.md").relative_to(ROOT)),
    }
    print(json.dumps(summary))
    return 0 if all(r["mutants"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
