//! The layer-by-layer compression pipeline (issue 5).
