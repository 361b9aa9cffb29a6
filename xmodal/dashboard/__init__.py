"""The Streamlit dashboard's library side: everything the pages call, kept out of ``pages/``.

- ``analysis``: pure functions (runs table, ranks, disagreements, selections, collapse, modality gap)
- ``catalogues``: runs grouped by the catalogue they were trained on, run health, runs too young for a config
- ``slices``: metrics per slice with Wilson/bootstrap intervals; saved named slices and CSV export
- ``plots``: plotly ``Figure`` builders; ``mapplot``: the WebGL map; ``colours``: fashion colours, palettes
- ``mapview``: map filters with counts, a point's neighbours, located items
- ``embeds``: a run's whole catalogue embedded (``python -m xmodal.dashboard.embeds``, in the background)
- ``projection``: the cached 2-D map of a run's joint space (``python -m xmodal.dashboard.projection``)
- ``sprites``: thumbnail sheets for the map's hover photos; ``sprite_job`` makes them for a map that has none
  (``python -m xmodal.dashboard.sprite_job``)
- ``tasks``: background processes that report their phase and time left; ``bench_map``: the map at 100k points
- ``jobs``: launch, list, stop and resume ``python -m xmodal.train``; ``queue`` runs several in turn
- ``runmeta``: notes, tags, hiding, config diffs and safe deletion of run folders
- ``uploads``: checks on uploaded query images; ``checks``: what is wrong with a catalogue folder, in one line
- ``escape``: catalogue and run-folder text made safe for Markdown (``md``) and Plotly labels (``plotly``)
- ``state``: the one module with Streamlit cached loaders; ``sidebar``, ``ui``, ``pickers`` (catalogue and
  run pickers kept in the URL), ``manage`` (Home's run manager) and ``mapui`` (the map's panels): widgets

Only ``state``, ``sidebar``, ``ui``, ``pickers``, ``manage``, ``mapui`` and the other engineers' ``*_view``
modules import Streamlit; the rest import without it.
"""
