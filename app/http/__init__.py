"""What every HTTP door shares: authentication and rate limits, body intake, validation errors,
problem responses, the outer middleware, metrics, serving, logs and proxies."""
