"""Helpers shared by the tests: import them, never a test module or a conftest.

Fixture plugins (registered by ``pytest_plugins`` in tests/conftest.py, so every test sees them):

- ``db``: ``database_url()`` for subprocesses, ``session_row`` / ``session_log_written`` (waits
  for rows written behind), the sync thread's DB connection fixtures (autouse).
- ``redis``: the private redis-server (``start``/``stop`` from the root conftest's hooks),
  ``redis_server``, ``r``, and ``_clean_redis`` (autouse: an empty Redis for every test).
- ``users``: ``user_factory``, ``auser_factory``.
- ``ws``: ``WSClient`` (a communicator speaking protocol frames) and ``ws_client``.
- ``celery``: ``CeleryProcess``, ``celery_env``, ``celery_worker_process``.
- ``consume``: ``ConsumeProcess``, ``consume_process`` (``manage.py presence_consume``).
- ``seed``: ``seed_connections`` (session rows and presence, no sockets).
- ``sentinel``: ``SentinelTopology`` (a primary, a replica and three sentinels: ``url``,
  ``failover``, ``kill_primary``, ``restart``, ``pause_primary``) and ``sentinel_topology``.
- ``cluster``: the sharded store's shapes: ``ClusterTopology`` (3 primaries of a Redis
  Cluster: ``url``, ``reshard``, ``kill``, ``stop``; fixtures ``redis_cluster``,
  ``fresh_cluster``), ``ShardsTopology`` (3 independent servers; ``redis_shards``: their URLs)
  and ``SentinelShards`` (3 shards behind one sentinel set: ``urls``, ``failover(shard)``;
  ``sentinel_shards``).

Plain helpers:

- ``paths``: ``ROOT``, the project root (cwd and PYTHONPATH of subprocesses).
- ``servers``: ``ASGIServer``, ``ASGIServerFactory`` (real uvicorn processes; the e2e fixtures).
- ``browser``: headless Chromium through Selenium (``start_chromium``, ``login``, ``screenshot``).
- ``e2e_clients``: HTTP and ``websockets`` clients against a real server (tokens, sessions).
- ``webhook_receiver``: a real HTTP receiver that records every POST.
- ``console``: presence seeded through the real scripts, Redis round trips of a request.
- ``eventlog``: reading every shard's event-log stream (per-shard marks, merged entries).
- ``homes``: each user's, room's and address's keys at its home shard (``user_keys``,
  ``room_keys``, ``conn_exp``, ``stat_total``...).
- ``wire``: round trips carrying the store's scripts, counted on the wire
  (``counting_script_trips``); ``stats_sum``, every shard's live counters summed.
- ``lua_timing``: fixed TTL and key grace (``_timing``, an autouse fixture to import).
- ``hook_log``: appending events to the event log as the Lua scripts write them.
"""
