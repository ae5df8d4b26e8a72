"""The wire: protobuf messages (header + opaque docs payload) and the docs codec.

Nothing here unpickles or evaluates what it receives (DESIGN.md decision 6).
"""
