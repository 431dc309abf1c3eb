"""The web UI and REST API over the queue and the image library."""
