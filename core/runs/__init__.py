"""Run bookkeeping: where a run keeps what it writes (``layout``), who owns it and what it
was asked (``run_record``), its checkpoints (``manifest``, ``checkpoint_index``,
``checkpoint_catalog``, ``retention``), names for the ones worth keeping (``registry``,
``publish``), what it records and tells trackers (``records``, ``tracking``), and what a
finished run says (``summary``)."""
