"""Tests of the service package (API, uploads, settings, queueing)."""
