"""Adapters onto Ray for work that outgrows one machine: QA sets answered by a cluster's workers
(`ray_qa`). Ray schedules, retries and moves the data; nothing here schedules on its own."""
