"""Background work: the one list of jobs and what runs them."""
