"""Port wrappers: an adapter of any kind, wrapped to add one thing while keeping its port. A
completer or training client whose answers are cached (``cache``), every port call traced
or logged (``events``), faults injected or transient failures retried (``resilience``), the
metrics sent to several sinks (``fanout``), and a run's processes past the first made
read-only followers (``followers``). They import no adapter kind."""
