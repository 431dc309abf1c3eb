"""Helpers for checking the playground from outside: the services as real processes, the
whole stack, a stand-in backend, a fake Hugging Face hub. Shared by the tests, the benchmarks
and the reliability suite; the services themselves never import them."""
