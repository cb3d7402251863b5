"""petpipe: a Beam + TensorFlow pipeline that trains and serves a species → breed multi-head classifier."""

__version__ = "0.1.0"
