"""The Open Inference Protocol (KServe V2) REST gateway over the same Redis."""
