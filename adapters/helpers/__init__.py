"""Building blocks for adapter authors: the request queue a session's ordering rests on,
locks, seeded fault injection for fakes, the base of the trackers, secret redaction, the
base every galley completer shares (``completing``) and the fail-closed stand-in for a port
nobody configured. Port wrappers are in ``galley.adapters.wrappers``. They import no
adapter."""
