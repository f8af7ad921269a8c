"""Alerts, a stage of the collector's pipeline: rules from the config, state per consumer group in Redis.

- ``config`` / ``rule_config``: the ``[alerts]`` section, built-in rules, one struct per rule kind
- ``kinds``: one class per rule kind (what it counts, how it reads its window, what it says)
- ``observation``, ``windows``, ``records``: events as rules see them, window slices, alert records
- ``rules``: collect a batch, plan the lifecycle (pure); ``state``: the group's shared state (Lua)
- ``notify``, ``silences``: Alertmanager-style grouping, timers, inhibition; silences in Redis
- ``stage``: the stage the daemon writes batches to; ``channels``, ``delivery``: where notifications go
- ``cli``: ``telemetry-collector alerts`` (and ``silence``, ``silences``, ``expire``)
"""
