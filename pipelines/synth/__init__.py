"""Synthetic care.data landing zone with ground truth: ``generate(out_dir, ...)``.

See ``TRUTH.md`` in this package for the ground-truth files and the fault vocabulary.
"""

from .generator import generate

__all__ = ["generate"]
