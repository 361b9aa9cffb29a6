"""Work the dashboard runs in the background: training runs (``training``: launch, list, stop, resume), the
training queue (``queue``, with warm children from ``warm``) and detached tasks that report progress (``tasks``).
"""
