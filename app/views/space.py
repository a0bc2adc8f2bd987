"""Persona space: archetypes along the Assistant Axis (axis first), in PCA or in UMAP, coloured by projection."""

from __future__ import annotations

import streamlit as st

from app.charts import layer_figures, variance_figure
from app.space_charts import LAYOUTS, caption, coordinates_csv, persona_map, ranking_rows
from app.ui import load_space

st.title("Persona space")
base = load_space()
if base is None:
    st.stop()

left, mid, right = st.columns([2, 1, 2])
layout_name = left.radio("Layout", list(LAYOUTS.values()), horizontal=True, key="space_layout")
layout = next(k for k, v in LAYOUTS.items() if v == layout_name)
dims = int(mid.radio("Dimensions", ["2D", "3D"], horizontal=True, key="space_dims")[0])
layer = base["target_layer"]
if layout != "umap":
    layer = right.slider("Layer", 0, base["n_layers"] - 1, base["target_layer"], key="space_layer")
else:  # the slider would otherwise vanish without a word
    right.caption(
        f"UMAP is fitted once, at the target layer {base['target_layer']}, when the space is built: it has no layer "
        "to choose. Axis first and PCA show any layer."
    )
summary = load_space(layer) if layer != base["target_layer"] else base
if summary is None:
    st.stop()

names = sorted(r["name"] for r in summary["roles"])
a_col, b_col = st.columns([4, 1])
highlight = a_col.multiselect("Search and highlight archetypes", names, key="space_highlight")
weak = summary.get("weak") or {}
hide_weak = b_col.toggle(f"Hide weak ({len(weak)})", key="space_hide_weak")
fig = persona_map(summary, layout, dims, highlight, hide_weak=hide_weak)
st.plotly_chart(fig, width="stretch", key="persona_map")
st.caption(caption(summary, layout, dims, hide_weak))

a, b = st.columns(2)
with a:
    st.subheader("Most Assistant-like")
    st.dataframe(ranking_rows(summary, 15, most=True), hide_index=True)
with b:
    st.subheader("Least Assistant-like")
    st.dataframe(ranking_rows(summary, 15, most=False), hide_index=True)

if highlight:
    st.subheader("Highlighted")
    for role in [r for r in summary["roles"] if r["name"] in highlight]:
        weak_note = f", weak ({role.get('in_role')} in-role answers)" if role.get("weak") else ""
        with st.expander(f"{role['name']} — {role['category']}, projection {role['projection']:.2f}{weak_note}"):
            st.text(role["description"])
            example = role.get("example") or {}
            if example:
                st.text(f"Q: {example.get('question', '')}")
                st.text(f"A: {example.get('answer', '')}")

c, d = st.columns(2)
c.plotly_chart(variance_figure(summary), width="stretch", key="variance")
d.plotly_chart(layer_figures(summary), width="stretch", key="by_layer")
if weak:
    plural = "s" if len(weak) != 1 else ""
    with st.expander(f"{len(weak)} weak archetype{plural}: drawn, but too few in-role answers to shape the axis"):
        st.dataframe([{"archetype": k, "in-role answers": v} for k, v in weak.items()], hide_index=True)
if summary["dropped"]:
    with st.expander(f"{len(summary['dropped'])} archetypes without any usable answer"):
        st.dataframe([{"archetype": k, "reason": v} for k, v in summary["dropped"].items()], hide_index=True)

e, f = st.columns(2)
e.download_button(
    "Coordinates (CSV)", coordinates_csv(summary), file_name=f"persona-space-layer{summary['layer']}.csv", mime="text/csv"
)
if f.button("Prepare the chart as HTML (works offline)"):
    f.download_button(
        "Download chart (HTML)", fig.to_html(include_plotlyjs=True), file_name="persona-space.html", mime="text/html"
    )
