"""What the services share: settings, the Redis job queue, the library store, the local launcher."""
