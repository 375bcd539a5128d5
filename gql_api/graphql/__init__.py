"""The GraphQL front end: schema, types, context and the ASGI view."""
