"""``figures.images``: pictures sent as PNG data URIs, and read back exactly."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from dml_core.figures.images import PNG_URI, image_trace, pixels


def test_a_picture_goes_as_a_png_and_comes_back_exactly() -> None:
    """Catches: pixels sent as ``z`` (plotly.js then converts each one in the browser), a lossy
    encoding (JPEG changes values), and a picture read back transposed or as grey."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)  # not square: catches a transpose
    trace = image_trace(rgb, hoverinfo="skip")
    assert trace.z is None
    assert trace.source.startswith(PNG_URI)
    assert trace.hoverinfo == "skip"
    np.testing.assert_array_equal(pixels(trace), rgb)
    np.testing.assert_array_equal(pixels(trace.to_plotly_json()), rgb)  # a spec's dict too


def test_a_trace_without_a_png_is_refused() -> None:
    with pytest.raises(ValueError, match="no PNG"):
        pixels(go.Image(z=np.zeros((2, 2, 3), np.uint8)))
