"""The 2-D benchmark: toy distributions, exact sample metrics and a small trainer for the TwinFlow objective."""
