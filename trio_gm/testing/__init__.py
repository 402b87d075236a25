"""Tools for testing gm groups.

* ``trio_gm.testing.soak``: the soak test (``python -m trio_gm.testing.soak``).
* ``trio_gm.testing.explore``: the schedule explorer.
* ``trio_gm.testing.postgres``: a private PostgreSQL server to stop, kill
  or hang in store-outage tests (:class:`~trio_gm.testing.postgres.PostgresServer`).
* ``trio_gm.testing.netns``: simulated hosts (Linux network namespaces on a
  bridge) whose links a test may cut and heal
  (:class:`~trio_gm.testing.netns.SimulatedNetwork`).
"""
