"""The live monitor: the page at `/` and its Server-Sent Events stream at `/events`."""
