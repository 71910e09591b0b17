"""Background work: the one list of jobs and what runs them (sweep, flush, reap, session
writer, reconcile), and the one reader of the event log's consumer groups.
"""
