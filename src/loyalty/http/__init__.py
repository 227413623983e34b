"""The HTTP layer every feature shares: bodies, parameters, responses, the route table, the
OpenAPI document generated from it, the access log and the server's connection limits."""
