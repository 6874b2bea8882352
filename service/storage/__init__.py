"""PostgreSQL: tables, engine, migrations and the batching writer."""
