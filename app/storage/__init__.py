"""Storage: the engines and their sessions, schema migrations, the search index per engine,
backups and the copy behind `migrate`. Nothing here imports a service or a door."""
