"""Over-the-air updates of the root slot: bundles, TUF-verified releases, A/B install, health-gated commit.

- :mod:`fieldbox.ota.bundle`: the bundle's bytes (manifest + compressed chunks), one definition for both ends.
- :mod:`fieldbox.ota.release`: what a release's TUF target says (path, custom metadata), one definition.
- :mod:`fieldbox.ota.version`: what "newer" means.

The device-side client modules import python-tuf; nothing long-running imports them.
"""
