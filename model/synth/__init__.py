"""Synthetic infrared small-target data: frames, datasets and videos."""
