"""Operator endpoints: ``/metrics`` (with the scrape-time collector), ``/healthz``, ``/readyz``,
the staff process listing.
"""
