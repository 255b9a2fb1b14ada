"""fieldbox_host: the host-side tools (build, emulate, flash, keys, release, serve).

Host code may import the device package's wire formats and CLI; the device
package never imports this one.
"""
