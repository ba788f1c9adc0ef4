"""The test suite is a package: modules import as ``tests.<folder>.<module>``, so basenames may repeat across
folders, helpers import from one place (``tests.colours``, ``tests.methods.helpers``), and ``tests/inspect`` or
``tests/widgets`` never shadow the standard library's ``inspect`` or the real ``widgets`` package."""
