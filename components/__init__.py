"""Pipeline stages: ingest → preprocess → train (model) → evaluate → export, each a pure core plus a thin shell."""
