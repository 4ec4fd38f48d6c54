"""Delivery of follow-up jobs to the website's Sidekiq."""
