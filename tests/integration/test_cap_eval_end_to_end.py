"""The cap evaluation end to end: on the embedded model, and a worker started on a space that holds a preset."""

from __future__ import annotations

import json

from tests.helpers.cap_report import REPORT


def test_end_to_end_on_the_embedded_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from backend.cli import main

    out = tmp_path / "eval"
    args = ["evaluate-cap", "--limit", "2", "--benign-per-kind", "1", "--percentiles", "75", "--max-new-tokens", "8"]
    pairs = tmp_path / "share" / "pairs.csv"
    assert main([*args, "--placebo", "1", "--out", str(out), "--export-pairs", str(pairs)]) == 0
    for name in ("report.json", "settings.csv", "report.html", "results.jsonl", "placebo.json", "pairs.json", "pairs-key.json"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert [r["setting"] for r in report["settings"]] == ["uncapped", "p75@21:27", "placebo1~p75@21:27"]
    assert report["seeds"] == [0, 1] and report["decoding"].startswith("sampled") and report["max_new_tokens"] == 8
    assert "embedding margin" in report["persona_metric"] and report["verdict"]["setting"] == "p75@21:27"
    html = (out / "report.html").read_text()
    assert "<script src=" not in html and "Plotly.newPlot" in html  # plotly.js inline: the report works offline
    shared = pairs.with_suffix(".html").read_text()  # the page a rater is sent: nothing to fetch at all
    assert "<script src=" not in shared and "http://" not in shared and "https://" not in shared
    assert len(pairs.read_text().splitlines()) == 1 + 4  # header + 2 items x 2 seeds
    assert report["settings"][0]["kl"] == 0.0 and report["settings"][1]["kl"] > 0


def test_a_worker_on_a_space_with_a_preset_starts_sessions_with_it(tiny_world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from backend.view.cap_preset import write_preset
    from tests.helpers.worker_harness import Worker

    folder = tmp_path / "space"
    shutil.copytree(tiny_world[1], folder)
    write_preset(folder, REPORT)  # p50 on layers [2, 4)
    w = Worker(tiny_world[0], folder, tmp_path / "preset.sqlite3")
    try:
        w.wait_ready()
        made = w.client.post("/sessions", json={})
        assert made.status_code in (200, 201), made.text
        controls = w.client.get(f"/sessions/{made.json()['id']}").json()["controls"]
        assert controls["cap_percentile"] == 50.0 and controls["cap_layers"] == [2, 4]
        # a session that asks for its own cap keeps it
        sid = w.session(controls={"cap_percentile": 90.0})
        assert w.client.get(f"/sessions/{sid}").json()["controls"]["cap_percentile"] == 90.0
    finally:
        w.close()
