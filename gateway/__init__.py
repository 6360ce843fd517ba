"""The OpenAI-compatible HTTP gateway: chat routes, management routes, partner resolution and session history."""
