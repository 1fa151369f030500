"""Helpers for adapter authors: the request queue a session's ordering rests on, locks, fault
injection and retry wrappers for any adapter, and the fail-closed stand-in for a port nobody
configured. They import no adapter."""
