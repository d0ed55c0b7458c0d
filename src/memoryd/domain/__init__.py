"""The domain: tenancy, memories, keys, projects, audit, quotas, and the ports
(Protocols) that storage adapters implement. No I/O lives here."""
