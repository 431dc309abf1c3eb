"""DALL·E Mini/Mega inference backend: the model in JAX behind a small Flask service."""
