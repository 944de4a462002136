"""PersonAIzer self-hosted: one domain core behind REST, GraphQL and the CLI."""

__version__ = "0.1.0"
