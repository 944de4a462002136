"""What the tests share: servers, PostgreSQL, documents, writers and row counts."""
