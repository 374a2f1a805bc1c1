"""Interop tests against real mail servers started on loopback (see README.md)."""
