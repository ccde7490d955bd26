"""Integration tier: real Redis and PostgreSQL (and real HTTP on localhost), one service's
adapters at a time, driven in-process. Every test has its own database and key prefix."""
