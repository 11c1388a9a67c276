"""What ``inferis up`` starts on one machine: ``embedded`` (a private redis-server)
and ``supervisor`` (worker processes)."""
