"""The Streamlit dashboard's library side: everything the pages call, kept out of ``pages/``.

- ``analysis``: pure functions (runs table, slices, disagreements, selections, collapse, modality gap)
- ``plots``: plotly ``Figure`` builders
- ``jobs``: launch, list and stop ``python -m xmodal.train`` subprocesses; ``queue`` runs several in turn
- ``projection``: the cached 2-D map of a run's joint space (``python -m xmodal.dashboard.projection``)
- ``uploads``: checks on uploaded query images; ``checks``: what is wrong with a catalogue folder, in one line
- ``escape``: catalogue and run-folder text made safe for Markdown (``md``) and Plotly labels (``plotly``)
- ``state``: the one module with Streamlit cached loaders; ``sidebar`` and ``ui``: shared widgets

Only ``state``, ``sidebar`` and ``ui`` import Streamlit; the rest import without it.
"""
