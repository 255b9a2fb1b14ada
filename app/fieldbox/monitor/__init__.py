"""The resource monitor: samples device health, buffers it, writes it down-sampled and bounded.

:mod:`.sampler` reads psutil, thermal zones and the Pi's throttling flags;
:mod:`.telemetry` batches writes (one transaction a minute), down-samples old
points and queues them for sync at low priority; :mod:`.events` is the
supervisord event listener protocol that records programs exiting or going
FATAL (served by the same ``monitor`` program, :mod:`fieldbox.services.monitor`);
:mod:`.config` is ``monitor.toml``.
"""
