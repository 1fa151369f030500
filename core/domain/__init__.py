"""The pure domain: what training and sampling are made of (types, tensors, token chunks),
how rows become tokens (chat, data formats, rendering), and the arithmetic of each method
(losses, schedules, batching, preferences and DPO, RL and rewards, scorers, environments,
distillation). Nothing here knows about runs, stages or ports."""
