"""Traits: the space's trait vectors against the Assistant Axis (ranked by cosine), the trait space's own map, and
the archetypes that express a chosen trait most and least. Read from the worker (``/traits``)."""

from __future__ import annotations

import streamlit as st

from app.charts import charts_html
from app.client import WorkerError, WorkerUnavailable
from app.trait_charts import archetype_bars, ranked, trait_bars, trait_map
from app.ui import client

st.title("Traits")
try:
    base = client().traits()
except WorkerUnavailable as exc:
    st.warning(f"The traits come from the worker, which is not ready: {exc}")
    st.stop()
except WorkerError as exc:
    health = client().health()
    st.info(f"This space has no trait vectors to show ({exc}). Build them with:")
    st.code(f"python -m backend build-traits --space {health.get('space') or 'DIR'} --model {health.get('model') or 'MODEL'}")
    st.caption("See docs/traits.md for the options (the judge, the questions, resuming an interrupted build).")
    st.stop()

left, right = st.columns([3, 1])
layer = left.slider("Layer", 0, base["n_layers"] - 1, base["target_layer"], key="traits_layer")
dims = int(right.radio("Map", ["2D", "3D"], horizontal=True, key="traits_dims")[0])
try:
    data = base if layer == base["layer"] else client().traits(layer)
except (WorkerError, WorkerUnavailable) as exc:
    st.error(f"Cannot read the traits at layer {layer}: {exc}")
    st.stop()

order = [t["name"] for t in ranked(data)]
a, b = st.columns([3, 1])
name = a.selectbox("Choose a trait (type to search)", sorted(order), key="traits_choice")
n = int(b.number_input("Archetypes at each end", min_value=3, max_value=60, value=15, step=1, key="traits_n"))
trait = next(t for t in data["traits"] if t["name"] == name)
weak = " · weak: few answers did what they were asked" if trait.get("weak") else ""
st.markdown(f"**{name}** — {trait.get('description', '')}  \n*opposite:* {trait.get('opposite', '')}")
st.caption(
    f"cosine with the Assistant Axis {trait['axis_cosine']:+.3f} (rank {order.index(name) + 1} of {len(order)} from the "
    f"Assistant end) · with PC1-PC3 of the persona space " + ", ".join(f"{c:+.2f}" for c in trait.get("pc_cosines") or []) + weak
)

bars = trait_bars(data, highlight=name)
space_map = trait_map(data, dims, highlight=name)
try:
    expressing = client().trait_archetypes(name, layer)
except (WorkerError, WorkerUnavailable) as exc:
    st.error(f"Cannot read the archetypes on {name!r}: {exc}")
    st.stop()
by_archetype = archetype_bars(expressing, n)

c, d = st.columns(2)
with c:
    st.plotly_chart(bars, width="stretch", key="trait_bars")
    st.caption("Blue: traits toward the Assistant end of the axis; red: toward the role-play end. * hatched: weak.")
with d:
    st.plotly_chart(space_map, width="stretch", key="trait_map")
    st.plotly_chart(by_archetype, width="stretch", key="trait_archetypes")
    st.caption(
        f"Each archetype's role vector projected on the unit {name!r} vector at layer {layer}; the dashed line is the "
        "default Assistant's projection. * hatched: weak archetype."
    )
if data.get("dropped"):
    with st.expander(f"{len(data['dropped'])} traits without a vector"):
        st.dataframe([{"trait": k, "reason": v} for k, v in data["dropped"].items()], hide_index=True)

st.download_button(
    "Charts (HTML, works offline)",
    data=lambda: charts_html([bars, space_map, by_archetype], f"Traits at layer {layer}"),
    file_name=f"traits-layer{layer}.html",
    mime="text/html",
    on_click="ignore",
)
