"""The Hydra configs (a package, so that installed console scripts find them as blendin.conf)."""
