"""What the engine itself provides, registered through the same hooks as any plugin."""
