"""The ToST training-recipe tweaks that are not architecture: losses (label smoothing)."""
