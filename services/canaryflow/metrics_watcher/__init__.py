"""The metrics-watcher: owns judgement of a canary while a step holds.

Split so that each concern can grow alone: ``providers`` know where to ask (one module per
metrics backend), ``templates`` know what to ask (PromQL per named metric), ``judge`` decides
with no I/O, and ``analysis`` runs the ticks of one step and publishes the verdicts.
"""
