"""The inferis benchmark suite: ``python -m benchmarks run`` and ``python -m benchmarks memory``.

Everything runs on this machine over loopback: a private redis-server and
workers for inferis, subprocess servers for the HTTP engines, and the load
generator in the benchmark process itself (so it shares the cores).
"""
