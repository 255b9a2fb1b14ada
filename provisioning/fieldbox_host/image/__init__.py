"""How the appliance image is made: Debian root filesystem, initramfs, disk layout.

The public entry point is :func:`fieldbox_host.image.build.build_image`; the
steps it runs live in modules named after what they do:

=================  ==========================================================
``hostcheck``      tools, binfmt, disk space, board name: checked before any long work
``boards``         the board profiles (``qemu-arm64``/``rpi`` share one image; ``jetson``)
``debian``         the cached Debian root filesystem (mmdebstrap, trimmed, checksummed)
``debs``           single arm64 ``.deb`` files fetched with a private apt state
``wheels``         aarch64 PyPI wheels laid into the root filesystem
``kmods``          which kernel modules the appliance keeps (and their dependencies)
``rootfs``         the final root filesystem: Debian cache + wheels + fieldbox + overlay
``initramfs``      our own initramfs: static busybox + root-device modules + ``/init``
``bootpart``       the FAT boot partition's files (boot script, slot state, Pi firmware)
``layout``         the partition table (one definition, used by build, tests and boot files)
``disk``           writing the disk image without loop mounts
``manifest``       the build manifest (packages, wheels, partitions)
=================  ==========================================================
"""
