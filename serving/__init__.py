"""TF Serving-compatible gRPC server (stand-in for tensorflow_model_server) and client."""
