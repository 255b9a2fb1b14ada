"""Update keys, the TUF repository and publishing releases into it (``fieldbox keys``, ``fieldbox release``).

- :mod:`.keys`: one ed25519 key per TUF role in a directory; the root key offline.
- :mod:`.repository`: the repository directory (TUF metadata + bundles) any static server can host.
- :mod:`.publish`: a built image -> bundle -> signed target.
"""
