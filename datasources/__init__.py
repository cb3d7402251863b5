"""Data sources that are not stages of training: the generator of the embedded synthetic pet data set."""
