"""Orchestration, kept apart from the stages: one driver (:mod:`.driver`) and two executors that run
stage calls in-process (:mod:`.local`) or on Ray actor pools (:mod:`.ray_executor`)."""
