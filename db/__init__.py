"""PostgreSQL storage: typed models, engine/session factory, migrations, the event log."""
