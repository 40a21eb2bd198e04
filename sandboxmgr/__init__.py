"""sandboxmgr: chroot-style sandboxes over distro root filesystems built from YAML profiles."""

__version__ = "0.1.0"
