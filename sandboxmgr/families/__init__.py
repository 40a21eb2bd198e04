"""Distribution families, one module each: debian, ubuntu (a subclass of Debian), rpm.

Each module defines its :class:`~sandboxmgr.distros.Distro` subclass (methods,
variants, defaults, validation, what goes in the bootstrap, preflight) with the
builders that make its roots (cache directories, index state, bootstrap, install),
and registers its distros with :func:`sandboxmgr.distros.register`. A new family is
one more module here, named in ``distros.SHIPPED``, plus its profiles in configs/.
"""
