"""Deployment and Flow: builders over the spec, and their lifecycle over the runtime."""
