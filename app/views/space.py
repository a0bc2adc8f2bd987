"""Persona space: archetypes in PCA or UMAP, coloured by their projection on the Assistant Axis."""

from __future__ import annotations

import csv
import io

import streamlit as st

from app.charts import layer_figures, persona_map, variance_figure
from app.ui import load_space

st.title("Persona space")
base = load_space()
if base is None:
    st.stop()

left, mid, right = st.columns([1, 1, 2])
layout = left.radio("Layout", ["PCA", "UMAP"], horizontal=True, key="space_layout").lower()
dims = int(mid.radio("Dimensions", ["2D", "3D"], horizontal=True, key="space_dims")[0])
layer = base["target_layer"]
if layout == "pca":
    layer = right.slider("Layer (PCA)", 0, base["n_layers"] - 1, base["target_layer"], key="space_layer")
summary = load_space(layer) if layer != base["target_layer"] else base
if summary is None:
    st.stop()

names = sorted(r["name"] for r in summary["roles"])
highlight = st.multiselect("Search and highlight archetypes", names, key="space_highlight")
fig = persona_map(summary, layout, dims, highlight)
st.plotly_chart(fig, width="stretch", key="persona_map")
st.caption(
    f"{summary['model']['name']} — {len(summary['roles'])} archetypes kept, {len(summary['dropped'])} dropped. "
    "Colour: projection on the Assistant Axis (blue = more Assistant-like). The star is the default Assistant. "
    "PNG: the camera button on the chart."
)

ranked = sorted(summary["roles"], key=lambda r: r["projection"], reverse=True)
a, b = st.columns(2)
with a:
    st.subheader("Most Assistant-like")
    st.dataframe([{"archetype": r["name"], "projection": round(r["projection"], 2)} for r in ranked[:15]], hide_index=True)
with b:
    st.subheader("Least Assistant-like")
    st.dataframe([{"archetype": r["name"], "projection": round(r["projection"], 2)} for r in ranked[::-1][:15]], hide_index=True)

if highlight:
    st.subheader("Highlighted")
    for role in [r for r in summary["roles"] if r["name"] in highlight]:
        with st.expander(f"{role['name']} — {role['category']}, projection {role['projection']:.2f}"):
            st.text(role["description"])
            example = role.get("example") or {}
            if example:
                st.text(f"Q: {example.get('question', '')}")
                st.text(f"A: {example.get('answer', '')}")

c, d = st.columns(2)
c.plotly_chart(variance_figure(summary), width="stretch", key="variance")
d.plotly_chart(layer_figures(summary), width="stretch", key="by_layer")
if summary["dropped"]:
    with st.expander(f"{len(summary['dropped'])} dropped archetypes and why"):
        st.dataframe([{"archetype": k, "reason": v} for k, v in summary["dropped"].items()], hide_index=True)

buffer = io.StringIO()
writer = csv.writer(buffer)
writer.writerow(["name", "category", "projection", "pc1", "pc2", "pc3", "umap2_x", "umap2_y"])
for r in summary["roles"]:
    writer.writerow([r["name"], r["category"], r["projection"], *r["pca"], *(r["umap_2d"] or ["", ""])])
e, f = st.columns(2)
e.download_button("Coordinates (CSV)", buffer.getvalue(), file_name=f"persona-space-layer{summary['layer']}.csv", mime="text/csv")
if f.button("Prepare the chart as HTML (works offline)"):
    f.download_button(
        "Download chart (HTML)", fig.to_html(include_plotlyjs=True), file_name="persona-space.html", mime="text/html"
    )
