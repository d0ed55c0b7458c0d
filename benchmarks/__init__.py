"""Load generators that measure a real `memoryd serve` process from outside
(not part of the shipped package). Run them from the repository root with
`python -m benchmarks` or `make bench`; figures in docs/performance.md.

`harness` holds what every suite shares (the server process, the drivers,
the figures); `auth` and `memory` are the suites; `__main__` is the CLI.
"""
