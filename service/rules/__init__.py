"""Automation rules: "when a device says X, do Y", edge-triggered, state kept in the database.

schema.py (the YAML file) -> loader.py (checked and compiled against the route table, with
expressions.py and templates.py) -> stage.py (per message, in the pipeline: a RuleRecord only when a
rule's value changes) -> engine.py (per batch, in the writer's transaction: transitions derived
against the locked stored state, firings recorded for the outbox).
"""
