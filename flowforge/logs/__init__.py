"""Task output: captured by agents, tailed live from Redis, kept in a LogStore."""
