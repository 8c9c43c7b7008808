//! Owned by the fusion work (issue 4).
