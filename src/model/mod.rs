//! MLP description, forward pass and training (issue 5).
