"""The mlink framework: config, Redis, codecs, model zoo, CLI, supervisor."""
