"""Chains: one TOML file describes many agent processes (config, supervisor, worker, live view)."""
