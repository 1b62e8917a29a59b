"""An example third-party quantlinear plugin."""
