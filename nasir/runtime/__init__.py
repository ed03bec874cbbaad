"""The runtime search and training share (docs/runtime.md); it imports neither of them.

- `dist`: the process group under torchrun (`Dist`, `init_distributed`, `shard`, `barrier`).
- `state`: versioned checkpoints written by rank 0 after every rank's RNG state is gathered
  (`save_checkpoint`, `load_checkpoint`).
- `metrics`: metrics.jsonl whose length a checkpoint records, so that a resume is idempotent (`MetricsLog`).
- `loop`: what every loop does at a step boundary: progress bar, stop signal, `stop_after_steps`, callback
  (`Control`).
- `fit`: the resumable training loop driven by a `Task` (classification and detection training).
- `settings`: errors named by the setting (`SettingDiagnostic`); front ends map them to their flags.
- `process`: process set-up for a long run (`keep_freed_memory`).
"""
