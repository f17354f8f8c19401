"""Tests of the worker package (batching, runtime, rq worker)."""
