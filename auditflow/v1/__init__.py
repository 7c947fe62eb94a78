"""Generated protobuf and gRPC stubs of the auditflow.v1 contract (protos/auditflow/v1).

Do not edit the *_pb2* files: run `python tools/genprotos.py`.
"""
