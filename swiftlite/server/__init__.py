"""The OpenAI-compatible HTTP server behind `mm deploy`: routes (app), the request shapes and the map of the request
modules (protocol: json_body, chat_request, completion_request, fields, sampling_fields, structured_output,
encoding), response shapes (responses), errors in OpenAI's shape (errors), Prometheus metrics (metrics), and a
helper that serves an app from a background thread (background)."""
