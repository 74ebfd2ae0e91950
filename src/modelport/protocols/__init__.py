"""The wire layer shared by the server's edges and the client: wire formats <-> ``Tensors``.

``v2/`` holds the Open Inference Protocol (KServe V2): tensor codecs (JSON data and raw
bytes), large JSON bodies, REST request and response bodies, gRPC messages and model
metadata. ``tfserving/`` holds TensorFlow Serving's REST bodies. Nothing here knows about
transports (Starlette, grpc servers, sockets) or about the ``ModelManager``: the edges in
``serving/`` and ``client/`` do the talking and call these to translate.
"""
