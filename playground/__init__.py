"""What the services share: settings, the Redis job queue, the backend protocol, the library
store, the local launcher."""
