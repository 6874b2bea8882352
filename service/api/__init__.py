"""HTTP API: health, metrics and fleet queries. It observes the data path; it is not in it."""
