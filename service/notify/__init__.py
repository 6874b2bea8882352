"""Notifications: the outbox (rows written in the transaction that caused them) and its sender."""
