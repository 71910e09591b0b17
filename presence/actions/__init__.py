"""acts."""
