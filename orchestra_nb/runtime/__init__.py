"""The runtime: the parent-side supervisor and the code that runs inside worker and gateway processes."""
