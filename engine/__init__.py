"""inferis engine: the worker and everything it runs.

``serving/`` the request path, ``models/`` model versions in memory,
``backends/`` the frameworks, ``isolation/`` models in a child process,
``config.py`` the worker's settings, ``metrics.py``, ``cli/`` the ``inferis``
command and ``local/`` what ``inferis up`` starts.
"""
