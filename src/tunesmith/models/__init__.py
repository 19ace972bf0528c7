"""Models: where they come from (registry), loading, and what trains (adapters, freezing)."""
