"""App speed in a real browser: cold start (servers started -> persona-space chart drawn with every archetype)
and a layer switch (slider moved -> chart redrawn for the new layer). The last line is JSON.

    python bench/app.py            # on a scratch cache: the embedded model is converted once into the tests' store
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.view.space import read_space
from tests.helpers.browser import Servers, launch_browser
from tests.helpers.scratch import use_scratch_cache

SHIPPED = Path(__file__).resolve().parents[1] / "cached_activations" / "smollm2-135m"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switches", type=int, default=4)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    kept = len(read_space(SHIPPED).roles)
    target = read_space(SHIPPED).target_layer
    servers = Servers(compile=True)  # as `make run` starts it: the worker compiles its decode step in the background
    try:
        with sync_playwright() as p:
            context = launch_browser(p)
            page = context.new_page()
            servers.wait_app()
            page.goto(servers.url)
            page.wait_for_function(
                "() => { const g = document.querySelector('.js-plotly-plot'); return g && g.data && g.data.filter(t => t.name === "
                f"'archetypes' || t.name === 'weak archetypes').reduce((n, t) => n + t.x.length, 0) === {kept}; }}",
                timeout=120_000,
            )
            cold = time.perf_counter() - servers.started
            switches = []
            slider = page.locator("input[type=range][aria-label='Layer']")
            for i in range(args.switches):
                layer = target + (1 if i % 2 == 0 else 0)
                slider.focus()
                t0 = time.perf_counter()
                page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
                page.wait_for_function(
                    f"() => {{ const g = document.querySelector('.js-plotly-plot'); return g && g.layout && g.layout.title && "
                    f"String(g.layout.title.text).includes('layer {layer}'); }}",
                    timeout=60_000,
                )
                switches.append(time.perf_counter() - t0)
            context.close()
    finally:
        servers.close()
    print(
        json.dumps(
            {
                "cold_start_s": round(cold, 2),
                "layer_switch_s": round(statistics.median(switches), 3),
                "layer_switches": [round(s, 3) for s in switches],
                "archetypes": kept,
            }
        )
    )


if __name__ == "__main__":
    use_scratch_cache()  # never the user's cache folder: their sessions database, their converted models
    main()
