"""Transcripts: project every assistant turn of one or more conversations onto the Assistant Axis, overlay their
drift, and read any turn token by token."""

from __future__ import annotations

import csv
import hashlib
import io

import streamlit as st

from app.charts import standalone_html
from app.transcript_sets import (
    UploadError,
    assistant_texts,
    overlay_chart,
    split_upload,
    strip_scale,
    summary_rows,
    token_strip,
    turn_rows,
)
from app.ui import call, client, load_space, plain, worker_status

st.title("Transcripts")
st.write(
    "Load one or more conversations — OpenAI-style message lists, the paper's transcript JSON (`conversation`, "
    "`model`, `turns`, ...) or JSONL with one conversation a line — and see where each assistant turn sits on the "
    "Assistant Axis. Long conversations are read in windows of whole messages; each turn says how much context it saw."
)
summary = load_space()
health = worker_status()
uploaded = st.file_uploader(
    "Conversations (JSON or JSONL)", type=["json", "jsonl"], key="transcript_files", accept_multiple_files=True
)
if summary is None:
    st.stop()
layer = st.slider("Layer", 0, summary["n_layers"] - 1, summary["target_layer"], key="transcript_layer")
if not uploaded:
    st.info("Choose one or more JSON or JSONL files to begin (several are overlaid, e.g. a capped and an unsteered run).")
    st.stop()
conversations = []
for file in uploaded:
    try:
        conversations.extend(split_upload(file.name, file.getvalue()))
    except UploadError as exc:
        st.error(str(exc))
if not conversations:
    st.stop()
if health is None:
    st.info("Projecting needs the model worker; start it with `make run`.")
    st.stop()

cache = st.session_state.setdefault("transcript_results", {})
results, texts = [], []
for name, data in conversations:
    key = (hashlib.sha256(repr(data).encode()).hexdigest(), layer)
    if key not in cache:
        with st.spinner(f"Projecting every assistant turn of {name}…"):
            projected = call(client().project, data, layer, tokens=True)
        if projected is None:  # the worker said why; nothing is cached, so a rerun tries again
            continue
        cache[key] = projected
    results.append((name, cache[key]))
    texts.append(assistant_texts(data))
if not results:
    st.stop()

fig = overlay_chart(results, summary if layer == summary["target_layer"] else None)
event = st.plotly_chart(fig, width="stretch", on_select="rerun", key="transcript_chart")
st.dataframe(summary_rows(results), hide_index=True)
points = event.get("selection", {}).get("points", []) if isinstance(event, dict) else []
if points and isinstance(points[0].get("customdata"), list):
    clicked = tuple(int(v) for v in points[0]["customdata"])
    if st.session_state.get("transcript_clicked") != clicked:  # a click on the chart opens that turn below
        st.session_state["transcript_clicked"] = clicked
        st.session_state["transcript_which"] = results[clicked[0]][0]
        st.session_state["transcript_pick"] = clicked[1] + 1

names = [name for name, _ in results]
if st.session_state.get("transcript_which") not in names:
    st.session_state["transcript_which"] = names[0]
which = st.selectbox("Read a conversation", names, key="transcript_which")
index = names.index(which)
result, turn_texts = results[index][1], texts[index]
n_turns = max(1, len(result["turns"]))
if not 1 <= int(st.session_state.get("transcript_pick", 1)) <= n_turns:
    st.session_state["transcript_pick"] = 1
pick = int(st.number_input("Assistant turn", 1, n_turns, key="transcript_pick"))
turn = result["turns"][pick - 1]
facts = [f"projection {turn['projection']:.3f}" if turn.get("projection") is not None else "no projection"]
if "context_tokens" in turn:
    facts.append(f"{turn['context_tokens']} tokens of context")
if turn.get("left_out_messages"):
    facts.append(f"{turn['left_out_messages']} earlier messages left out (window)")
if turn.get("error"):
    facts.append(turn["error"])
st.caption(" · ".join(facts))
if pick - 1 < len(turn_texts):
    st.markdown(plain(turn_texts[pick - 1]))
if turn.get("token_projections"):
    strip = token_strip(turn, scale=strip_scale(result))  # one colour scale for every turn of this transcript
    st.plotly_chart(strip, width="stretch", key="transcript_strip")
    st.caption("Colours use one scale for every turn of this conversation (its lowest to its highest token).")

buffer = io.StringIO()
rows = turn_rows(results)
writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["transcript"])
writer.writeheader()
writer.writerows(rows)
a, b = st.columns(2)
a.download_button("Projections (CSV)", buffer.getvalue(), file_name="transcript-projections.csv", mime="text/csv")
b.download_button(  # plotly.js inside the file: it opens offline; built only when clicked (it is ~5 MB)
    "Chart (HTML)", data=lambda: standalone_html(fig), file_name="transcript-drift.html", mime="text/html", on_click="ignore"
)
