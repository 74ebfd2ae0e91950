"""Contract suites: one set of cases run against every edge (and every runtime)."""
