//! DPP engine on the host (issue 3).
