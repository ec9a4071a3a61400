"""Pure statistics and rendering of recorded runs."""
