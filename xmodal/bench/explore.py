"""Section 6 of ``python -m xmodal.bench``: the exploration views.

- the Embeddings map at 100k points (``xmodal.dashboard.maps.bench_map.measure``): building the WebGL figure,
  and in headless Chromium the first draw and the redraw after a colour change;
- one explanation of one pair (word and region importance, ``xmodal.retrieval.explain.bench_explain``) on the tiny
  run, at the backbone's default image size, against its 2 s budget.
"""
from __future__ import annotations

from pathlib import Path

from ..retrieval.explain import bench_explain
from .common import BenchConfig, Row, tiny_run


def bench_explore(cfg: BenchConfig, work: Path) -> list[Row]:
    rows: list[Row] = []
    map_points = cfg.map_points
    try:
        from ..dashboard.maps.bench_map import measure  # lazy: the map's Plotly and pandas, optional here
        m = measure(map_points, browser=cfg.map_browser)
    except Exception as err:  # noqa: BLE001 - the dashboard extras (or a browser) are optional here
        rows.append(Row("6 explore", f"map of {map_points:,} points", f"skipped ({err})", "-", "-", "-", None))
    else:
        rows.append(Row("6 explore", f"map of {m.get('points', map_points):,} points: build the WebGL figure",
                        f"{m['build_s'] + m['json_s']:.2f} s ({m['json_mb']:.1f} MB JSON)", "budget 2 s",
                        f"{m['build_s'] + m['json_s']:.2f} s", "<= 2 s", m["build_s"] + m["json_s"] <= 2))
        if "first_draw_s" in m:
            draw = m["first_draw_s"]
            rows.append(Row("6 explore", f"map of {map_points:,} points: first draw in Chromium", f"{draw:.2f} s",
                            "budget 3 s", f"{draw:.2f} s", "<= 3 s", draw <= 3))
            rows.append(Row("6 explore", f"map of {map_points:,} points: redraw after a colour change",
                            f"{m['recolour_s']:.2f} s", "budget 1 s", f"{m['recolour_s']:.2f} s", "<= 1 s",
                            m["recolour_s"] <= 1))
        else:
            rows.append(Row("6 explore", "map in Chromium", f"skipped ({m.get('skipped', 'no browser')})", "-", "-",
                            "-", None))
    e = bench_explain(tiny_run(cfg, work))
    size = f"{e['image_size'][0]}x{e['image_size'][1]}"
    rows.append(Row("6 explore", f"explain one pair ({e['model']}, {size}, {e['copies']} forward passes, "
                    f"{e['runtime']})", f"{e['seconds']:.2f} s (median {e['median_s']:.2f})",
                    "budget 2 s", f"{e['seconds']:.2f} s", "<= 2 s", e["seconds"] <= 2))
    return rows
