"""The OpenAI-compatible HTTP server behind `mm deploy`: routes (app), request checks (protocol), response
shapes (responses), errors in OpenAI's shape (errors), Prometheus metrics (metrics), and a helper that serves
an app from a background thread (background)."""
