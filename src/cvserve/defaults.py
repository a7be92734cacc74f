"""Defaults that more than one command shares, each spelled once.

Readers import them; nobody re-derives them.
"""

from __future__ import annotations

from pathlib import Path

# Where builds put the Triton model repository and where ``cvserve serve`` looks for it. Built output,
# kept apart from the shipped python-backend sources in ``model_repository/`` (cvserve.model_repository).
DEFAULT_REPOSITORY = Path("models")

# Encoded image formats cvserve serves, and therefore the files it reads from image folders
# (calibration, validation, golden sets, load tests): what is read is what is served.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
