"""Cap tuning: the latest cap evaluation's trade-off plot; pick a setting and load it into the live chat."""

from __future__ import annotations

from typing import Any

import streamlit as st
from streamlit.errors import StreamlitAPIException

from app import rate_pairs
from app.cap_reports import (
    find_reports,
    pick_for,
    read_report,
    report_label,
    reports_root,
    settings_table,
    shipped_reports,
    verdict_text,
)
from app.chat_view import PICK_KEY
from backend.view.frontier import tradeoff_figure

st.title("Cap tuning")
reports = find_reports()
if not reports:
    st.info(
        f"No cap evaluation of your own under `{reports_root()}` yet.\n\n"
        "**What this page shows, once there is one:** whether capping the Assistant projection keeps the model out of "
        "the personas that 60 attack prompts push it into. For each cap setting: the paired shift of the persona "
        "score against uncapped replies, with a 95% interval, next to the cost on ordinary questions (benign KL); "
        "placebo caps along random directions of the same cost, as the control; the verdict those intervals give; "
        "example replies, uncapped beside capped; blinded pairs you can rate; and a button that loads a setting "
        "into the live chat.\n\n"
        "**To make one** (from the project folder; the setup `make run` did is enough), the recipe of the shipped "
        "measurement:\n\n"
        "```\n.venv/bin/python -m backend evaluate-cap --benign-per-kind 2 --percentiles 25,50,75 --seeds 0,1 "
        "--placebo 2 --split dev,test --out reports/cap-eval\n```\n\n"
        "On the embedded model it took 52 minutes on the 2-core development machine (one thread, other work running); "
        "`--seeds 0 --placebo 1` does about half the work. This page finds the report by itself (or set "
        "PERSONA_SPACE_CAP_REPORTS to the folder that holds one)."
    )
    shipped = shipped_reports()
    if not shipped or not st.toggle(
        "Show the measurement shipped with Persona Space (made on the development machine)", key="cap_shipped"
    ):
        st.stop()
    reports = shipped
choice = st.selectbox("Report", reports, format_func=report_label, key="cap_report")
report = read_report(choice)
rec = report["recommendation"]
seeds = report.get("seeds") or [report.get("seed", 0)]
split = report.get("split")
st.caption(
    f"{report['model']} · judge {report['judge']} · {report['n_attack']} attack, {report['n_benign']} benign items"
    + (f" (split: {split['dev']} dev, {split['test']} test; figures on test)" if split else "")
    + f" · {report.get('decoding', 'greedy')}, {report['max_new_tokens']} new tokens, seeds {seeds} · {report.get('created', '')}"
)
verdict = report.get("verdict")
if verdict:
    st.markdown(verdict_text(verdict))
if rec.get("setting"):
    st.success(f"Recommended: **{rec['setting']}** — rule: {rec['rule']}")
else:
    st.warning(f"No setting recommended: {rec['why']}. Rule: {rec['rule']}")

event: Any = st.plotly_chart(tradeoff_figure(report), on_select="rerun", selection_mode="points", key="cap_plot")
picked = None
points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else []
if not points and hasattr(event, "selection"):
    points = event.selection.get("points", [])
for point in points:
    if point.get("customdata"):
        picked = point["customdata"] if isinstance(point["customdata"], str) else point["customdata"][0]
names = [r["setting"] for r in report["settings"] if pick_for(report, r["setting"])]
if names:
    default = names.index(picked) if picked in names else (names.index(rec["setting"]) if rec.get("setting") in names else 0)
    setting = st.selectbox("Setting (click a point or choose)", names, index=default, key="cap_setting")
    pick = pick_for(report, setting)
    if st.button("Use this cap in the live chat", key="cap_use", type="primary") and pick:
        st.session_state[PICK_KEY] = pick
        try:
            st.switch_page("views/chat.py")
        except StreamlitAPIException:  # run alone (no navigation): the chat picks it up when it is opened
            st.success(f"{pick['setting']} will be loaded into the live chat's controls when you open it.")

st.subheader("Settings")
st.dataframe(settings_table(report), hide_index=True)
st.subheader("Example replies, uncapped vs capped")
pending = rate_pairs.pending_texts(choice.parent)
examples = [e for e in report.get("examples", []) if not rate_pairs.blinds(e, pending)]
if len(examples) < len(report.get("examples", [])):
    st.caption(
        f"{len(report['examples']) - len(examples)} example(s) hidden until every blinded pair below is rated "
        "(they would show which reply was capped)."
    )
for e in examples:
    with st.expander(f"{e['group']} · {e['which']} affected · {e['item']} ({e['kind']}) · {e['setting']}"):
        st.markdown(f"**Prompt:** {e['prompt']}")
        left, right = st.columns(2)
        left.markdown("**Uncapped**")
        left.text(e["uncapped"])
        right.markdown(f"**Capped ({e['setting']})**")
        right.text(e["capped"])

rate_pairs.show(choice.parent)
