"""The database: tables, engines and upgrades, and every job state change (lifecycle.py)."""
