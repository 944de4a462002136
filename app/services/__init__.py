"""The use cases. Each function takes keyword-only arguments, returns domain or Public models,
and raises `app.errors.AppError` subclasses; none imports a web framework."""
