"""HTTP layer: OpenAI-compatible routes, schemas and errors. Only app.py imports it."""
