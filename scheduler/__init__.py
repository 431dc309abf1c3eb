"""Pops prompts from Redis first-in-first-out and has one backend at a time render each."""
