"""Alembic migrations of the SQL schema, installed as the package data `schemas.migrations`.

Alembic loads these files by path; nothing imports them.
"""
