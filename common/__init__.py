"""Small leaves every layer may import: errors and exit codes. Nothing here imports the rest of petpipe."""
