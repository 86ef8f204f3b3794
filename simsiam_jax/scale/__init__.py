"""Runs at scale: the compile-only plan of a run on TPU slices (pod_plan), the chips' data
sheets (hardware), and the XLA settings of CPU hosts (xla_flags)."""
