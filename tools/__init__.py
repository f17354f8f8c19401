"""Tooling around the service: benchmarks (`masenet bench service|video|load`), load harnesses, the synthetic
traffic they send, and the launcher that starts a local stack (`masenet up`: a private Redis, workers and the API;
also used by the tests and `deploy/live_stack.py`). Unlike `service/`, which stays light so the API process never
loads torch, this package may import `model`, `service` and `jobs`; it is never imported by the API itself.
"""
