"""Operations around runs, not runs themselves: ``tunesmith doctor`` (is this machine ready)
and ``tunesmith plan`` (will this config fit, and how long will it take). Above the recipes,
since the plan calibrates with a few real steps of the recipe."""
