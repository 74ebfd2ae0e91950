"""Open Inference Protocol (KServe V2): codecs, REST bodies, gRPC messages, metadata."""
