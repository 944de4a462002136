"""The GraphQL door: one Strawberry schema over the same services REST calls (API.md section 10).

`schema.schema` is the schema; `view.graphql_route` mounts it at `/graphql`, where the view
authenticates, charges the rate limit once per request and translates errors once, at the edge.
"""
