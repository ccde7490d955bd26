"""End-to-end tier: the services run as separate OS processes, exactly as compose starts them
(`intentflow run SERVICE`), and are observed only through Redis, HTTP, the sandbox and SQL."""
