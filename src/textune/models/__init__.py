"""Backbones (bundled, local or hub encoders) and their heads."""
