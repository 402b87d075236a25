"""Tools for testing gm groups: the soak test (``trio_gm.testing.soak``)."""
