"""Benchmark harness: raw FastAPI sockets vs fastapi-websocket-stabilizer vs stabilizer.

Run ``python -m bench.core --quick`` for a smoke check, ``python -m bench.core`` for the full
run (see BENCHMARKS.md). Load only ever targets 127.0.0.1.
"""
