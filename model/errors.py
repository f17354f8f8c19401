"""Named exceptions of the model package. Routes and the command line turn them into user-facing errors."""

from __future__ import annotations


class ModelError(Exception):
    """Base class for errors raised by the model package."""


class ConversionError(ModelError):
    """A reference state dict does not match the architecture (unknown, missing or mis-shaped key)."""


class CheckpointError(ModelError):
    """A checkpoint file is missing, corrupt, or describes a different model."""


class DatasetError(ModelError):
    """A dataset (data.yaml, image or label file) is missing or malformed."""
