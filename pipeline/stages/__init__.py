"""One module per stage, each a function from its config section(s) and input artifacts to an output artifact;
pipeline/run.py only sequences them: data → train → evaluate (+ bless) → export → smoke query."""
