"""The Traits page (app/views/traits.py) renders headless (AppTest) over a scripted worker whose answers are the
real view of a synthetic space with traits, and says how to build traits when the space has none."""

from __future__ import annotations

from typing import Any

from app.charts import charts_html
from app.client import WorkerError
from app.trait_charts import archetype_bars, trait_bars, trait_map
from backend.view.traits import NoTraits, UnknownTrait, trait_archetypes, trait_summary
from tests.helpers.app_pages import page, texts
from tests.unit.test_trait_view import NAMES, WEAK, make_view


class TraitClient:
    """``/health``, ``/traits`` and ``/traits/{name}/archetypes`` as the worker answers them, from a SpaceView."""

    def __init__(self, traits: bool = True) -> None:
        self.view = make_view(seed=1, traits=traits)
        self.calls: list[tuple[str, Any]] = []

    def health(self) -> dict[str, Any]:
        return {"ready": True, "status": "ready", "space": "/spaces/tiny", "model": "tiny-model"}

    def traits(self, layer: int | None = None) -> dict[str, Any]:
        self.calls.append(("traits", layer))
        try:
            return trait_summary(self.view, layer)
        except NoTraits as exc:
            raise WorkerError(str(exc)) from exc

    def trait_archetypes(self, name: str, layer: int | None = None) -> dict[str, Any]:
        self.calls.append(("archetypes", (name, layer)))
        try:
            return trait_archetypes(self.view, name, layer)
        except (NoTraits, UnknownTrait) as exc:
            raise WorkerError(str(exc)) from exc


def test_the_traits_page_renders_every_trait() -> None:
    fake = TraitClient()
    at = page("traits", fake).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Traits"
    assert at.slider(key="traits_layer").value == 1  # the target layer
    assert sorted(at.selectbox(key="traits_choice").options) == sorted(NAMES)
    charts = at.get("plotly_chart")
    assert len(charts) == 3
    chosen = at.selectbox(key="traits_choice").value
    assert ("archetypes", (chosen, 1)) in fake.calls
    assert chosen in texts(at)
    at.slider(key="traits_layer").set_value(2).run()
    at.selectbox(key="traits_choice").set_value("delta").run()
    assert not at.exception, at.exception
    assert ("traits", 2) in fake.calls and ("archetypes", ("delta", 2)) in fake.calls
    assert "weak" in texts(at)


def test_a_space_without_traits_gets_the_build_command() -> None:
    at = page("traits", TraitClient(traits=False)).run()
    assert not at.exception, at.exception
    assert not at.get("plotly_chart")
    assert "build-traits" in at.code[0].value and "/spaces/tiny" in at.code[0].value
    assert "no trait vectors" in at.info[0].value


def test_the_charts_draw_every_trait_and_mark_the_weak_ones() -> None:
    view = make_view(seed=4)
    data = trait_summary(view)
    bars = trait_bars(data, highlight="beta")
    assert len(bars.data) == 1 and len(bars.data[0].x) == len(NAMES)
    assert list(bars.data[0].x) == sorted(bars.data[0].x, reverse=True)  # the Assistant end first (at the top)
    labels = list(bars.data[0].y)
    assert {lab for lab in labels if lab.endswith("*")} == {f"{n}*" for n in WEAK}
    notes = [a.text for a in bars.layout.annotations]
    assert any("Assistant end" in t for t in notes) and any("role-play end" in t for t in notes)
    for dims in (2, 3):
        fig = trait_map(data, dims, highlight="beta")
        drawn = [n for trace in fig.data if trace.name in ("traits", "weak traits") for n in trace.customdata]
        assert sorted(drawn) == sorted(NAMES)
        assert all("cosine with the Assistant Axis" in h for trace in fig.data[:1] for h in trace.hovertext)
    arche = archetype_bars(trait_archetypes(view, "alpha"), n=2)
    assert [len(t.x) for t in arche.data] == [2, 2]
    assert any("default Assistant" in a.text for a in arche.layout.annotations)
    out = charts_html([bars, arche], "Traits")
    assert out.count("Plotly.newPlot") == 2  # both charts, plotly.js once, embedded: no script is fetched
    assert "<script src=" not in out and 'src="https://cdn' not in out
    assert len(out) > 1_000_000 and out.count("<script>/**") == 1  # plotly.js itself, once
