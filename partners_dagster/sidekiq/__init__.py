"""Delivery of follow-up jobs from the outbox to the website's Sidekiq (Rails 6.1 ActiveJob).

``payload`` and ``delivery`` know nothing of Dagster; ``resource`` is the Dagster resource.
"""
