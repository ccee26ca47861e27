"""SB3 policies and feature extractors."""
