"""TensorFlow Serving's REST API: request and response bodies."""
