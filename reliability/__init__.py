"""The reliability and security suite (issue 8): the real local stack under faults, load and
hostile input, with a report of the figures. `python -m reliability --help`."""
