"""A stand-in for the `ngrok` agent binary, used only where the real service cannot be reached (tests)."""
