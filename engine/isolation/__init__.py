"""Models in a supervised child process: ``framing`` (messages on a socket pair),
``child`` (the backend process), ``runner`` (the worker's side, with timeouts)."""
