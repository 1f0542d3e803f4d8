"""Traffic simulator for clusters whose pods serve nothing.

KWOK pods never answer a request, so without this process Prometheus would have no
per-version signal to judge a canary by. The simulator stands in for the users: it reads
which versions really back each opted-in Service, sends them traffic in that proportion and
exports the metrics a real workload would, shaped by a per-version behaviour the tests
control. A bad version then looks bad only because traffic actually reached it.
"""
