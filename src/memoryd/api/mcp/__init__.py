"""The MCP endpoint for AI agents (see `endpoint`)."""
