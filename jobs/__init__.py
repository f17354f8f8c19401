"""The job contract shared by the API and the workers: settings, typed jobs, job state, the rq adapter.

Nothing here imports torch, numpy, `model`, `worker` or `service`: the API process and the workers both
import this package, and it stays light enough for the API.
"""
