"""Built-in plugins of nanochat-gateway, one module each."""
