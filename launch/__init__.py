"""Everything that touches files, processes and torch: render, validate, run, the CLI."""
