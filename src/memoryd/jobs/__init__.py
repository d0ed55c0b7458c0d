"""Running stored operations (the job queue lives in the control store)."""

from memoryd.jobs.runner import JobContext, JobRunner, LeaseLost

__all__ = ["JobContext", "JobRunner", "LeaseLost"]
