"""Transcripts: project every assistant turn of a conversation onto the Assistant Axis and plot the drift."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import streamlit as st

from app.charts import standalone_html, transcript_chart
from app.ui import call, client, load_space, plain, worker_status

st.title("Transcripts")
st.write(
    "Load a conversation — an OpenAI-style message list, or the paper's transcript JSON (`conversation`, `model`, "
    "`turns`, ...) — and see where each assistant turn sits on the Assistant Axis."
)
summary = load_space()
health = worker_status()
uploaded = st.file_uploader("Conversation (JSON)", type=["json"], key="transcript_file")
if summary is None:
    st.stop()
layer = st.slider("Layer", 0, summary["n_layers"] - 1, summary["target_layer"], key="transcript_layer")
if uploaded is None:
    st.info("Choose a JSON file to begin.")
    st.stop()
try:
    data = json.loads(uploaded.getvalue().decode("utf-8"))
except (UnicodeDecodeError, ValueError) as exc:
    st.error(f"{uploaded.name} is not a JSON text file: {exc}")
    st.stop()
if health is None:
    st.info("Projecting needs the model worker; start it with `make run`.")
    st.stop()

cache = st.session_state.setdefault("transcript_results", {})
key = (hashlib.sha256(uploaded.getvalue()).hexdigest(), layer)
if key not in cache:
    with st.spinner("Projecting every assistant turn…"):
        projected = call(client().project, data, layer)
    if projected is None:  # the worker said why; nothing is cached, so a rerun tries again
        st.stop()
    cache[key] = projected
result = cache[key]

messages = data.get("conversation", data.get("messages")) if isinstance(data, dict) else data
assistant_texts = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
fig = transcript_chart(result, summary if layer == summary["target_layer"] else None)
event = st.plotly_chart(fig, width="stretch", on_select="rerun", key="transcript_chart")
points = event.get("selection", {}).get("points", []) if isinstance(event, dict) else []
chosen = int(points[0]["customdata"]) if points else None
rows = [
    {
        "turn": t["index"] + 1,
        "projection": t["projection"],
        "tokens": t["n_tokens"],
        "nearest": ", ".join(n["name"] for n in t.get("nearest", [])[:3]),
    }
    for t in result["turns"]
]
st.dataframe(rows, hide_index=True)
if chosen is not None and st.session_state.get("transcript_clicked") != chosen:
    st.session_state["transcript_clicked"] = chosen
    st.session_state["transcript_pick"] = min(chosen + 1, max(1, len(assistant_texts)))
pick = st.number_input("Read assistant turn", 1, max(1, len(assistant_texts)), key="transcript_pick")
if assistant_texts:
    text = assistant_texts[int(pick) - 1]
    st.markdown(plain(text if isinstance(text, str) else json.dumps(text)))

buffer = io.StringIO()
writer = csv.DictWriter(buffer, fieldnames=["turn", "projection", "tokens", "nearest"])
writer.writeheader()
writer.writerows(rows)
a, b = st.columns(2)
a.download_button("Projections (CSV)", buffer.getvalue(), file_name="transcript-projections.csv", mime="text/csv")
b.download_button(  # plotly.js inside the file: it opens offline; built only when clicked (it is ~5 MB)
    "Chart (HTML)", data=lambda: standalone_html(fig), file_name="transcript-drift.html", mime="text/html", on_click="ignore"
)
