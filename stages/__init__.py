"""Pipeline stages: the processes that move data (decoder, scheduler, profiler)."""
