"""Alembic migrations for personabot's database.

A package (not just a folder) so it is installed with personabot and
``core.storage.migrate`` can find it through ``importlib`` from anywhere.
"""
