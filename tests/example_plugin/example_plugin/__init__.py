"""An example nanochat-gateway plugin package (see docs/plugins.md)."""
