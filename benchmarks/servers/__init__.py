"""Server-side scripts, run by each engine in its own virtualenv.

They import nothing from the benchmark package (it is not installed there):
only their engine, onnxruntime, numpy and the sibling ``onnx_session`` module
(this folder is put on PYTHONPATH). Each reads the JSON file named by the
BENCH_CONFIG environment variable.
"""
