"""The application on top of every layer: the CLI, the supervisor that starts and
watches stage processes, the session engine shared by run/replay/bench, its sinks,
result collection and the benchmark. The only code that starts stages."""
