"""Generated code: gRPC stubs for proto/grpc_predict_v2.proto. Never edit; run ``make grpc``."""
