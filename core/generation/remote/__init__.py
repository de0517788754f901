"""Generation on a server reached over HTTP (an OpenAI-compatible chat-completions API)."""
