"""Training loops with exact resume."""
