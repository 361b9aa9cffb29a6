"""The Streamlit dashboard's library side: everything the pages call, kept out of ``pages/``.

- ``maps/``: the Embeddings map (embedding a catalogue and projecting it in the background, the WebGL figure,
  colours, filters, hover photos, its panels and download)
- ``jobs/``: background work (training runs, the training queue and its warm children, detached tasks)
- ``analysis``: pure functions (runs table, ranks, disagreements, selections, collapse, modality gap)
- ``catalogues``: runs grouped by the catalogue they were trained on, run health, runs too young for a config
- ``slices``: metrics per slice with Wilson/bootstrap intervals; saved named slices and CSV export
- ``plots``: plotly ``Figure`` builders; ``queries``: the Search page's live queries
- ``runmeta``: notes, tags, hiding, config diffs and safe deletion of run folders
- ``uploads``: checks on uploaded query images; ``checks``: what is wrong with a catalogue folder, in one line
- ``escape``: catalogue and run-folder text made safe for Markdown (``md``) and Plotly labels (``plotly``)
- ``state``: the one module with Streamlit cached loaders; ``sidebar``, ``ui``, ``pickers`` (catalogue and
  run pickers kept in the URL), ``manage`` (Home's run manager), ``explain_view``: widgets

Only ``state``, ``sidebar``, ``ui``, ``pickers``, ``manage``, ``maps.panels`` and the ``*_view`` modules import
Streamlit; the rest import without it.
"""
