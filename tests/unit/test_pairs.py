"""Blinded capped-vs-uncapped pairs: making, writing, rating and the unblinded summary; the Cap tuning page's rater."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from backend.errors import PersonaSpaceError
from backend.maths.bootstrap import mean_ci
from backend.view.pairs import (
    CHOICES,
    add_rating,
    make_pairs,
    rating_summary,
    read_key,
    read_pairs,
    read_ratings,
    write_pairs,
)
from tests.helpers.app_pages import page
from tests.helpers.cap_report import REPORT


def rows(n: int) -> list[dict[str, Any]]:
    return [
        {"item": f"a{i}", "seed": i % 2, "kind": "drop_role", "system": "You are helpful." if i % 3 else None,
         "prompt": f"Be pirate number {i}.", "setting": "p75", "uncapped": f"Arr {i}!", "capped": f"I am an assistant ({i})."}
        for i in range(n)
    ]  # fmt: skip


def test_make_pairs_is_deterministic_blinded_and_limited() -> None:
    data = rows(40)
    pairs, key = make_pairs(data, seed=3, limit=24)
    assert (pairs, key) == make_pairs(data, seed=3, limit=24)
    assert make_pairs(data, seed=4, limit=24) != (pairs, key)
    assert len(pairs) == len(key) == 24
    assert [p["pair"] for p in pairs] == [f"P{i:02d}" for i in range(1, 25)] == list(key)
    for p in pairs:
        assert set(p) == {"pair", "system", "prompt", "a", "b"}  # no side, setting, item or kind
        k = key[p["pair"]]
        src = next(r for r in data if r["item"] == k["item"])
        assert p["prompt"] == src["prompt"] and p["system"] == src["system"]
        assert (k["seed"], k["kind"], k["setting"]) == (src["seed"], "drop_role", "p75")
        capped, other = k["capped"], "b" if k["capped"] == "a" else "a"
        assert (p[capped], p[other]) == (src["capped"], src["uncapped"])
    sides = [k["capped"] for k in key.values()]
    assert sides.count("a") == sides.count("b") == 12  # balanced, so a habit of picking A is not a preference
    assert sides != sorted(sides) and sides[:12] != ["a"] * 12  # and mixed
    assert len({k["item"] for k in key.values()}) == 24  # distinct rows
    assert [k["item"] for k in key.values()][:5] != [f"a{i}" for i in range(5)]  # shuffled, not the first rows
    few, few_key = make_pairs(data[:5], limit=24)
    assert len(few) == 5 and sorted(k["capped"] for k in few_key.values()) == ["a", "a", "a", "b", "b"]
    with pytest.raises(ValueError, match="limit"):
        make_pairs(data, limit=0)
    with pytest.raises(PersonaSpaceError, match="lacks capped"):
        make_pairs([{k: v for k, v in data[0].items() if k != "capped"}])


def test_write_pairs_writes_the_csv_the_offline_page_and_the_key(tmp_path: Path) -> None:
    data = rows(6)
    data[0]["capped"] = 'I am <b>bold</b> & "quoted",\nover two lines.'
    pairs, key = make_pairs(data, seed=1)
    out = tmp_path / "run"
    written = write_pairs(tmp_path / "share" / "pairs.csv", pairs, key, out, meta={"report": "run", "n": 6})
    assert written == [
        tmp_path / "share" / "pairs.csv",
        tmp_path / "share" / "pairs.html",
        out / "pairs.json",
        out / "pairs-key.json",
    ]
    assert all(p.is_file() for p in written)
    assert not [p.name for p in [*out.iterdir(), *(tmp_path / "share").iterdir()] if p.name.endswith(".tmp")]
    with open(written[0], encoding="utf-8", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["pair", "system", "prompt", "reply_a", "reply_b", "more_like_the_assistant"]
    assert [(r["pair"], r["system"], r["prompt"], r["reply_a"], r["reply_b"]) for r in table] == [
        (p["pair"], p["system"] or "", p["prompt"], p["a"], p["b"]) for p in pairs
    ]
    assert all(r["more_like_the_assistant"] == "" for r in table)
    page_html = written[1].read_text(encoding="utf-8")
    for bad in ("<script src", "http://", "https://", "@import", "<link", "<iframe", "<img"):
        assert bad not in page_html.lower()
    assert not re.search(r"\burl\(", page_html.lower())  # no CSS resource (createObjectURL is not one)
    assert "<b>bold</b>" not in page_html and "I am &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;" in page_html
    assert "capped" not in re.sub(r"The page does not say which was capped\.", "", page_html)
    assert "new Blob(" in page_html and "downloadRatings()" in page_html
    for p in pairs:
        assert page_html.count(f"name='{p['pair']}'") == len(CHOICES)
    assert read_pairs(out) == {"meta": {"report": "run", "n": 6}, "pairs": pairs}
    assert read_key(out) == key
    with pytest.raises(PersonaSpaceError, match=r"must end in \.csv"):
        write_pairs(tmp_path / "pairs.txt", pairs, key, out, meta={})


def test_ratings_round_trip_latest_wins_and_bad_input_is_refused(tmp_path: Path) -> None:
    pairs, key = make_pairs(rows(4))
    write_pairs(tmp_path / "pairs.csv", pairs, key, tmp_path, meta={})
    assert read_ratings(tmp_path) == {}
    add_rating(tmp_path, "P01", "a", rater="ann")
    add_rating(tmp_path, "P02", "tie")
    add_rating(tmp_path, "P01", "b")
    with open(tmp_path / "ratings.jsonl", "a", encoding="utf-8") as f:
        f.write('not json\n["P03", "a"]\n{"pair": "P03", "choice": "maybe"}\n{"pair": 3, "choice": "a"}\n\n')
    assert read_ratings(tmp_path) == {"P01": "b", "P02": "tie"}
    first = json.loads((tmp_path / "ratings.jsonl").read_text().splitlines()[0])
    assert first["pair"] == "P01" and first["rater"] == "ann" and first["time"].endswith("+00:00")
    assert "capped" not in (tmp_path / "ratings.jsonl").read_text()
    with pytest.raises(PersonaSpaceError, match="no pair 'P99'"):
        add_rating(tmp_path, "P99", "a")
    with pytest.raises(PersonaSpaceError, match="one of a, b, tie"):
        add_rating(tmp_path, "P01", "capped")
    with pytest.raises(PersonaSpaceError, match="no pair"):
        add_rating(tmp_path / "elsewhere", "P01", "a")
    assert read_pairs(tmp_path / "elsewhere") is None
    (tmp_path / "pairs.json").write_text("{broken")
    assert read_pairs(tmp_path) is None


def test_rating_summary_unblinds_only_in_aggregate() -> None:
    key = {"P01": {"capped": "a"}, "P02": {"capped": "b"}, "P03": {"capped": "a"}}
    summary = rating_summary(key, {"P01": "a", "P02": "a", "P03": "tie", "P09": "a"})
    assert summary["rated"] == 3 and summary["capped_preferred"] == pytest.approx(0.5)
    assert (summary["capped_preferred_count"], summary["uncapped_preferred_count"], summary["ties"]) == (1, 1, 1)
    assert summary["ci"] == mean_ci([1.0, 0.0, 0.5]).ci and summary["ci"][0] <= 0.5 <= summary["ci"][1]
    assert rating_summary(key, {"P01": "a", "P02": "b"})["ci"] == [1.0, 1.0]
    assert rating_summary(key, {}) == {
        "rated": 0, "capped_preferred": None, "ci": None, "ties": 0, "uncapped_preferred_count": 0, "capped_preferred_count": 0,
    }  # fmt: skip


def page_texts(at: Any) -> list[str]:
    """Every string the page shows: markdown, text, captions, headers, alerts, buttons' and expanders' labels."""
    out = [e.value for kind in ("markdown", "text", "caption", "subheader", "title", "success", "info", "warning")
           for e in getattr(at, kind)]  # fmt: skip
    out += [b.label for b in at.button] + [e.label for e in at.expander] + [j.value for j in at.json]
    return [str(s) for s in out]


@pytest.mark.usefixtures("tiny_space")
def test_the_cap_tuning_page_rates_blinded_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_SPACE_CAP_REPORTS", str(tmp_path))
    run = tmp_path / "run1"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(REPORT))
    at = page("cap_tuning").run()
    assert not at.exception
    assert any("--export-pairs pairs.csv" in c.value for c in at.caption)
    assert "**Uncapped**" in [m.value for m in at.markdown]  # the report's example shows while there are no pairs

    ex = REPORT["examples"][0]
    data = [dict(r, item=f"b{i}", uncapped=f"Yo ho {i}.", capped=f"As an assistant ({i}).") for i, r in enumerate(rows(3))]
    data.append({"item": ex["item"], "seed": 0, "kind": ex["kind"], "system": None, "prompt": ex["prompt"],
                 "setting": ex["setting"], "uncapped": ex["uncapped"], "capped": ex["capped"]})  # fmt: skip
    pairs, key = make_pairs(data, seed=5)
    write_pairs(tmp_path / "pairs.csv", pairs, key, run, meta={})
    at = page("cap_tuning").run()
    assert not at.exception
    assert [s.value for s in at.subheader][-1] == "Rate pairs (blinded)"
    assert "0 of 4 rated" in [c.value for c in at.caption]
    assert not [e for e in at.expander if e.label == "Summary (unblinded)"]
    shown = page_texts(at)
    # the report's example quotes a pair, so it is hidden: no "Uncapped"/"Capped (p75)" label sits over its replies
    assert "**Uncapped**" not in shown and not [s for s in shown if s.startswith("**Capped")]
    assert sum(s == ex["capped"] for s in shown) <= 1 and sum(s == ex["uncapped"] for s in shown) <= 1
    for s in shown:
        if "capped" in s.lower():  # only page-wide text: the task line, the settings, the hidden-examples note
            assert not re.search(r"\b(reply )?[AB]\b", s) and not any(p[x] in s for p in pairs for x in ("a", "b"))
    assert [b.label for b in at.button if b.key and b.key.startswith("rate_")] == [
        "A is more like the Assistant", "B is more like the Assistant", "Can't tell",
    ]  # fmt: skip
    assert not any(
        isinstance(v, str) and ("capped" in v or v in {"a", "b"}) for k in at.session_state for v in [at.session_state[k]]
    )

    clicks = ["rate_a", "rate_b", "rate_b", "rate_a"]
    for n, button in enumerate(clicks):
        shown = page_texts(at)
        todo = pairs[n]
        assert todo["a"] in shown and todo["b"] in shown and todo["prompt"] in shown
        at.button(key=button).click().run()
        assert not at.exception
        assert f"{n + 1} of 4 rated" in [c.value for c in at.caption]
    assert read_ratings(run) == {p["pair"]: k[-1] for p, k in zip(pairs, clicks, strict=True)}
    assert len((run / "ratings.jsonl").read_text().splitlines()) == 4
    assert any("Every pair is rated (4)" in s.value for s in at.success)
    assert not [b for b in at.button if b.key and b.key.startswith("rate_")]

    expected = rating_summary(key, read_ratings(run))
    assert expected["rated"] == 4
    assert expected["capped_preferred_count"] == sum(
        k[-1] == key[p["pair"]]["capped"] for p, k in zip(pairs, clicks, strict=True)
    )
    summary = [e for e in at.expander if e.label == "Summary (unblinded)"]
    assert len(summary) == 1
    assert json.loads(summary[0].json[0].value) == expected
    assert f"of {expected['rated']} rated pairs" in summary[0].markdown[0].value
    assert f"**{expected['capped_preferred']:.0%}**" in summary[0].markdown[0].value
    assert "**Uncapped**" in [m.value for m in at.markdown]  # every pair rated: the example shows again
